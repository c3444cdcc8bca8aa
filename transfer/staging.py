"""Staging store: received KV frames held by transfer id until a request claims them.

Invariants (checked in tests):
- ``staged_bytes`` equals the sum of payload bytes of the transfers held; a transfer that is
  taken, discarded, failed or expired gives its bytes back at once.
- A transfer is COMPLETE only when its END frame arrived, the number of data frames equals
  the count END announced, and nothing failed; once FAILED it never becomes COMPLETE, and
  later frames for it are dropped.
- The store never holds more than ``budget_bytes`` of payload: a frame that would exceed it
  fails its transfer (the decode side then recomputes) instead of growing memory.
- Transfers nobody claims within ``ttl_s`` are dropped by ``expire``.
Thread-safe: the receiver's I/O thread adds, the engine's thread takes.
"""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field

import torch

from transfer.buffers import BufferPool


class TransferState(enum.Enum):
    UNKNOWN = "unknown"
    RECEIVING = "receiving"
    COMPLETE = "complete"
    FAILED = "failed"


@dataclass(slots=True)
class StagedFrame:
    layer: int
    block_start: int
    num_blocks: int
    tensor: torch.Tensor
    nbytes: int
    received_at: float
    buffer: bytearray | None = None  # pooled receive buffer the tensor may view


@dataclass
class StagedTransfer:
    transfer_id: str
    created_at: float
    frames: list[StagedFrame] = field(default_factory=list)
    nbytes: int = 0
    expected_frames: int | None = None
    info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def state(self) -> TransferState:
        if self.error is not None:
            return TransferState.FAILED
        if self.expected_frames is not None and len(self.frames) == self.expected_frames:
            return TransferState.COMPLETE
        return TransferState.RECEIVING


@dataclass
class StagingStats:
    frames_received: int = 0
    bytes_received: int = 0
    transfers_completed: int = 0
    transfers_failed: int = 0
    checksum_failures: int = 0
    auth_failures: int = 0
    expired: int = 0


class StagingStore:
    def __init__(self, budget_bytes: int, ttl_s: float, pool: BufferPool | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.ttl_s = ttl_s
        self.pool = pool or BufferPool(capacity_bytes=min(budget_bytes, 1 << 30))
        self.stats = StagingStats()
        self._transfers: dict[str, StagedTransfer] = {}
        self._staged_bytes = 0
        self._lock = threading.Lock()

    @property
    def staged_bytes(self) -> int:
        return self._staged_bytes

    def __len__(self) -> int:
        return len(self._transfers)

    def _get(self, transfer_id: str) -> StagedTransfer:
        staged = self._transfers.get(transfer_id)
        if staged is None:
            staged = self._transfers[transfer_id] = StagedTransfer(transfer_id, time.monotonic())
        return staged

    def _release(self, staged: StagedTransfer) -> None:
        self._staged_bytes -= staged.nbytes
        staged.nbytes = 0
        self.recycle(staged)

    def recycle(self, staged: StagedTransfer) -> None:
        """Return a transfer's receive buffers to the pool; its tensors are invalid after."""
        for frame in staged.frames:
            if frame.buffer is not None:
                self.pool.release(frame.buffer)
                frame.buffer = None
        staged.frames.clear()

    def _fail_locked(self, staged: StagedTransfer, reason: str) -> None:
        if staged.error is None:
            staged.error = reason
            self.stats.transfers_failed += 1
        self._release(staged)

    def add_frame(self, transfer_id: str, frame: StagedFrame) -> None:
        with self._lock:
            staged = self._get(transfer_id)
            self.stats.frames_received += 1
            self.stats.bytes_received += frame.nbytes
            if staged.error is not None:
                if frame.buffer is not None:
                    self.pool.release(frame.buffer)
                return
            if self._staged_bytes + frame.nbytes > self.budget_bytes:
                if frame.buffer is not None:
                    self.pool.release(frame.buffer)
                self._fail_locked(staged, "staging budget exceeded")
                return
            staged.frames.append(frame)
            staged.nbytes += frame.nbytes
            self._staged_bytes += frame.nbytes
            self._note_if_complete(staged)

    def end(self, transfer_id: str, frame_count: int, info: dict) -> None:
        with self._lock:
            staged = self._get(transfer_id)
            if staged.error is not None:
                return
            staged.expected_frames = frame_count
            staged.info = info
            if len(staged.frames) > frame_count:
                self._fail_locked(staged, "more data frames than END announced")
            self._note_if_complete(staged)

    def _note_if_complete(self, staged: StagedTransfer) -> None:
        if staged.state is TransferState.COMPLETE:
            self.stats.transfers_completed += 1

    def fail(self, transfer_id: str, reason: str) -> None:
        with self._lock:
            self._fail_locked(self._get(transfer_id), reason)

    def fail_unless_complete(self, transfer_ids: set[str], reason: str) -> None:
        with self._lock:
            for transfer_id in transfer_ids:
                staged = self._transfers.get(transfer_id)
                if staged is not None and staged.state is TransferState.RECEIVING:
                    self._fail_locked(staged, reason)

    def state(self, transfer_id: str) -> tuple[TransferState, str | None]:
        with self._lock:
            staged = self._transfers.get(transfer_id)
            if staged is None:
                return TransferState.UNKNOWN, None
            return staged.state, staged.error

    def take(self, transfer_id: str) -> StagedTransfer | None:
        """Remove and return a COMPLETE transfer; the caller owns its frames and hands them
        back with ``recycle`` once the KV is installed."""
        with self._lock:
            staged = self._transfers.get(transfer_id)
            if staged is None or staged.state is not TransferState.COMPLETE:
                return None
            del self._transfers[transfer_id]
            self._staged_bytes -= staged.nbytes
            return staged

    def discard(self, transfer_id: str) -> None:
        with self._lock:
            staged = self._transfers.pop(transfer_id, None)
            if staged is not None:
                self._release(staged)

    def expire(self, now: float | None = None) -> int:
        """Drop transfers older than ``ttl_s``; returns how many were dropped."""
        now = time.monotonic() if now is None else now
        with self._lock:
            old = [t for t in self._transfers.values() if now - t.created_at > self.ttl_s]
            for staged in old:
                self._release(staged)
                del self._transfers[staged.transfer_id]
            self.stats.expired += len(old)
            return len(old)
