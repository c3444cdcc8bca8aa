"""Which prefix blocks each worker holds, learned from its vLLM KV events.

Keys are block hashes in KV-event form (``router.block_hash.event_key``). For each worker the
index keeps the confirmed keys (``BlockStored`` adds, ``BlockRemoved`` drops,
``AllBlocksCleared`` and a worker restart empty it) and optimistic keys for requests the
router just sent there, which expire after ``optimistic_ttl_s`` unless an event confirms them.

Invariant (tested): ``match`` counts leading keys only — a worker holding blocks 0, 1 and 3 of
a prompt matches 2, since vLLM's prefix cache can only reuse an unbroken prefix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from router.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch


@dataclass
class _WorkerBlocks:
    confirmed: set[int] = field(default_factory=set)
    optimistic: dict[int, float] = field(default_factory=dict)  # key -> expiry


class PrefixIndex:
    def __init__(self, optimistic_ttl_s: float = 10.0) -> None:
        self.optimistic_ttl_s = optimistic_ttl_s
        self._workers: dict[str, _WorkerBlocks] = {}
        self._lock = threading.Lock()

    def _blocks(self, worker: str) -> _WorkerBlocks:
        blocks = self._workers.get(worker)
        if blocks is None:
            blocks = self._workers[worker] = _WorkerBlocks()
        return blocks

    def apply(self, worker: str, batch: KVEventBatch) -> None:
        with self._lock:
            blocks = self._blocks(worker)
            for event in batch.events:
                if isinstance(event, BlockStored):
                    for key in event.block_hashes:
                        if isinstance(key, int):
                            blocks.confirmed.add(key)
                            blocks.optimistic.pop(key, None)
                elif isinstance(event, BlockRemoved):
                    for key in event.block_hashes:
                        blocks.confirmed.discard(key)  # type: ignore[arg-type]
                        blocks.optimistic.pop(key, None)  # type: ignore[call-overload]
                elif isinstance(event, AllBlocksCleared):
                    blocks.confirmed.clear()
                    blocks.optimistic.clear()

    def reset(self, worker: str) -> None:
        with self._lock:
            self._workers[worker] = _WorkerBlocks()

    def note_routed(self, worker: str, keys: Sequence[int]) -> None:
        """Optimistically record that ``worker`` will hold ``keys`` shortly."""
        expiry = time.monotonic() + self.optimistic_ttl_s
        with self._lock:
            blocks = self._blocks(worker)
            for key in keys:
                if key not in blocks.confirmed:
                    blocks.optimistic[key] = expiry

    def match(self, worker: str, keys: Sequence[int], now: float | None = None) -> int:
        """How many leading ``keys`` the worker holds (confirmed or unexpired optimistic)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            blocks = self._workers.get(worker)
            if blocks is None:
                return 0
            matched = 0
            for key in keys:
                if key in blocks.confirmed or blocks.optimistic.get(key, 0.0) > now:
                    matched += 1
                else:
                    break
            return matched

    def sizes(self) -> dict[str, int]:
        """Confirmed blocks per worker (for /debug and metrics)."""
        with self._lock:
            return {name: len(blocks.confirmed) for name, blocks in self._workers.items()}

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for blocks in self._workers.values():
                stale = [k for k, expiry in blocks.optimistic.items() if expiry <= now]
                for key in stale:
                    del blocks.optimistic[key]
