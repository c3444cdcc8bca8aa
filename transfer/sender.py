"""KV sender: pooled, authenticated TCP connections to receivers, driven from any thread.

The engine thread calls ``send_layer`` for each layer as it is computed and ``finish`` after the
last one; both return at once. Per receiver, ``connections_per_peer`` sender threads each own
one connection and drain a shared bounded queue: they encode (off the engine thread),
checksum and write frames, so layer l is on the wire while layer l+1 computes.

Link emulation: an optional ``LinkShaper`` paces all connections to a set Gbit/s and adds a
one-way latency, so one box can emulate 1/10/25/100 Gbit/s links.

Flow control: a peer's queue holds at most ``max_inflight_frames``; when a stalled receiver
keeps it full for ``io_timeout_s`` the transfer is failed (decode then recomputes) instead of
buffering without bound. ``finish`` sends END once every data frame of the transfer is
written, or ABORT if any could not be; its future resolves to whether END went out.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import torch

from transfer.auth import client_handshake
from transfer.codecs import Codec, get_codec
from transfer.frames import (
    DTYPE_CODES,
    FrameHeader,
    FrameKind,
    control_payload,
    payload_checksum,
)
from transfer.shaping import LinkShaper
from transfer.sockio import tune_socket

log = logging.getLogger("prfaas.transfer.sender")

Address = tuple[str, int]
_SHAPED_CHUNK = 256 << 10  # pacing granularity on a shaped link
_MAX_REPORTS = 4096


def parse_address(address: str) -> Address:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"transfer address {address!r} is not host:port")
    return host, int(port)


@dataclass
class _Item:
    """One frame to write: a block tensor (DATA) or a control payload (END/ABORT)."""

    transfer_id: str
    kind: FrameKind
    done: Future
    layer: int = 0
    block_start: int = 0
    blocks: torch.Tensor | None = None
    control: bytes = b""
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class _Transfer:
    peer: Address
    frames: list[Future] = field(default_factory=list)
    failed: str | None = None
    raw_bytes: int = 0
    wire_bytes: int = 0
    first_write: float | None = None  # wall clock, comparable across processes
    last_write: float | None = None


@dataclass(frozen=True)
class TransferReport:
    """What one finished transfer cost on the wire."""

    transfer_id: str
    ok: bool
    frames: int
    raw_bytes: int
    wire_bytes: int
    first_write: float | None
    last_write: float | None

    @property
    def seconds(self) -> float:
        """Time from the first write starting to the last one ending."""
        if self.first_write is None or self.last_write is None:
            return 0.0
        return self.last_write - self.first_write

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else 1.0

    def overlap(self, compute_done_at: float) -> float:
        """Fraction of the time spent writing that ran before ``compute_done_at``."""
        if self.first_write is None or self.last_write is None:
            return 0.0
        if self.seconds <= 0:
            return 1.0 if self.last_write <= compute_done_at else 0.0
        return min(max((compute_done_at - self.first_write) / self.seconds, 0.0), 1.0)


class _Peer:
    """A bounded frame queue drained by a fixed pool of connections to one receiver."""

    def __init__(self, sender: KVSender, address: Address, connections: int,
                 queue_size: int) -> None:
        self.address = address
        self.queue: queue.Queue[_Item | None] = queue.Queue(maxsize=queue_size)
        self.threads = [
            threading.Thread(target=self._drain, args=(sender,), daemon=True,
                             name=f"prfaas-kv-send-{address[1]}-{i}")
            for i in range(connections)
        ]
        for thread in self.threads:
            thread.start()

    def _drain(self, sender: KVSender) -> None:
        sock: socket.socket | None = None
        while (item := self.queue.get()) is not None:
            if item.kind is FrameKind.DATA and sender.failure(item.transfer_id):
                item.done.set_result(False)
                continue
            try:
                header, payload = sender.encode(item)
            except ValueError as exc:  # this layer cannot be encoded: fail its transfer only
                log.warning("KV frame for %s not encodable: %s", item.transfer_id, exc)
                sender.fail(item.transfer_id, f"encode failed: {exc}")
                item.done.set_result(False)
                continue
            try:
                if sock is None:
                    sock = sender.connect(self.address)
                started = time.time()
                sender.write(sock, item.queued_at, header, payload)
                sender.note_written(item, started, len(header) + len(payload))
                item.done.set_result(True)
            except OSError as exc:
                log.warning("KV send to %s:%s failed: %s", *self.address, exc)
                if sock is not None:
                    sock.close()
                    sock = None
                sender.fail(item.transfer_id, f"send failed: {exc}")
                item.done.set_result(False)
        if sock is not None:
            sock.close()


class KVSender:
    def __init__(
        self,
        secret: bytes,
        codec: str = "raw",
        connections_per_peer: int = 1,
        max_inflight_frames: int = 128,
        connect_timeout_s: float = 5.0,
        io_timeout_s: float = 30.0,
        shaper: LinkShaper | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the KV sender needs a non-empty shared secret")
        self.shaper = shaper
        self.codec: Codec = get_codec(codec)
        self.connections_per_peer = connections_per_peer
        self.max_inflight_frames = max_inflight_frames
        self.connect_timeout_s = connect_timeout_s
        self.io_timeout_s = io_timeout_s
        self._secret = secret
        self._peers: dict[Address, _Peer] = {}
        self._transfers: dict[str, _Transfer] = {}
        self.reports: dict[str, TransferReport] = {}  # finished transfers; pop when read
        self._lock = threading.Lock()
        self._closer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prfaas-kv-close")

    # ---- the engine-facing surface -----------------------------------------------------

    def send_layer(self, peer: Address, transfer_id: str, layer: int, block_start: int,
                   blocks: torch.Tensor) -> bool:
        """Queue one layer's blocks (a tensor the caller no longer mutates). False if the
        transfer already failed or the peer's queue stayed full past the I/O timeout."""
        transfer = self._transfer(transfer_id, peer)
        if transfer.failed:
            return False
        item = _Item(transfer_id, FrameKind.DATA, Future(), layer, block_start, blocks)
        try:
            self._peer(peer).queue.put(item, timeout=self.io_timeout_s)
        except queue.Full:
            self.fail(transfer_id, f"send queue to {peer[0]}:{peer[1]} stalled")
            return False
        transfer.frames.append(item.done)
        return True

    def finish(self, transfer_id: str, info: dict) -> Future:
        """END after every queued frame of the transfer (ABORT if one failed)."""
        return self._closer.submit(self._close, transfer_id, info, None)

    def abort(self, transfer_id: str, reason: str) -> Future:
        """Tell the receiver to stop waiting; resolves to whether ABORT went out."""
        self.fail(transfer_id, reason)
        return self._closer.submit(self._close, transfer_id, {}, reason)

    def close(self) -> None:
        self._closer.shutdown(wait=True)
        for peer in self._peers.values():
            for _ in peer.threads:
                peer.queue.put(None)
        for peer in self._peers.values():
            for thread in peer.threads:
                thread.join(timeout=10)

    # ---- used by the connection threads ------------------------------------------------

    def note_written(self, item: _Item, started: float, wire_bytes: int) -> None:
        transfer = self._transfers.get(item.transfer_id)
        if transfer is None or item.blocks is None:
            return
        with self._lock:
            transfer.raw_bytes += item.blocks.numel() * item.blocks.element_size()
            transfer.wire_bytes += wire_bytes
            if transfer.first_write is None:
                transfer.first_write = started
            transfer.last_write = time.time()

    def failure(self, transfer_id: str) -> str | None:
        transfer = self._transfers.get(transfer_id)
        return transfer.failed if transfer is not None else None

    def fail(self, transfer_id: str, reason: str) -> None:
        with self._lock:
            transfer = self._transfers.get(transfer_id)
            if transfer is not None and transfer.failed is None:
                transfer.failed = reason

    def encode(self, item: _Item) -> tuple[bytes, memoryview | bytes]:
        if item.blocks is None:
            payload: memoryview | bytes = item.control
            header = FrameHeader(kind=item.kind, transfer_id=item.transfer_id,
                                 payload_len=len(payload), raw_len=len(payload),
                                 checksum=payload_checksum(payload))
            return header.pack(), payload
        blocks = item.blocks
        payload = self.codec.encode(blocks)
        header = FrameHeader(
            kind=FrameKind.DATA, transfer_id=item.transfer_id, layer=item.layer,
            block_start=item.block_start, num_blocks=blocks.shape[0],
            codec=self.codec.codec_id, dtype=DTYPE_CODES[blocks.dtype],
            shape=tuple(blocks.shape), raw_len=blocks.numel() * blocks.element_size(),
            payload_len=len(payload), checksum=payload_checksum(payload),
        )
        return header.pack(), payload

    def write(self, sock: socket.socket, queued_at: float, header: bytes,
              payload: memoryview | bytes) -> None:
        """Write one frame, paced by the link shaper when one is set."""
        if self.shaper is None:
            sock.sendall(header)
            if payload:
                sock.sendall(payload)
            return
        self.shaper.hold_until_due(queued_at)
        view = memoryview(payload).cast("B") if payload else memoryview(b"")
        self.shaper.consume(len(header))
        sock.sendall(header)
        for start in range(0, len(view), _SHAPED_CHUNK):
            piece = view[start:start + _SHAPED_CHUNK]
            self.shaper.consume(len(piece))
            sock.sendall(piece)

    def connect(self, address: Address) -> socket.socket:
        sock = socket.create_connection(address, timeout=self.connect_timeout_s)
        try:
            tune_socket(sock)
            client_handshake(sock, self._secret, self.connect_timeout_s)
            sock.settimeout(self.io_timeout_s)
        except BaseException:
            sock.close()
            raise
        return sock

    # ---- internals ---------------------------------------------------------------------

    def _transfer(self, transfer_id: str, peer: Address) -> _Transfer:
        with self._lock:
            transfer = self._transfers.get(transfer_id)
            if transfer is None:
                transfer = self._transfers[transfer_id] = _Transfer(peer)
            return transfer

    def _peer(self, address: Address) -> _Peer:
        with self._lock:
            peer = self._peers.get(address)
            if peer is None:
                peer = self._peers[address] = _Peer(
                    self, address, self.connections_per_peer, self.max_inflight_frames)
            return peer

    def _close(self, transfer_id: str, info: dict, abort_reason: str | None) -> bool:
        with self._lock:
            transfer = self._transfers.get(transfer_id)
        if transfer is None:
            return False
        wait(transfer.frames)
        sent_all = all(f.result() for f in transfer.frames)
        reason = abort_reason or transfer.failed or (None if sent_all else "a frame was lost")
        if reason is None:
            kind, payload = FrameKind.END, {"frames": len(transfer.frames), **info}
        else:
            kind, payload = FrameKind.ABORT, {"reason": reason}
        item = _Item(transfer_id, kind, Future(), control=control_payload(payload))
        try:
            self._peer(transfer.peer).queue.put(item, timeout=self.io_timeout_s)
            delivered = item.done.result(timeout=self.io_timeout_s + self.connect_timeout_s)
        except (queue.Full, TimeoutError):
            delivered = False
        finally:
            with self._lock:
                self._transfers.pop(transfer_id, None)
        ok = delivered and kind is FrameKind.END
        if len(self.reports) >= _MAX_REPORTS:  # nobody is reading them: keep the newest
            self.reports.pop(next(iter(self.reports)))
        self.reports[transfer_id] = TransferReport(
            transfer_id, ok, len(transfer.frames), transfer.raw_bytes, transfer.wire_bytes,
            transfer.first_write, transfer.last_write)
        if abort_reason is not None:
            return delivered  # the ABORT itself went out
        return ok
