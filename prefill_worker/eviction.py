"""Byte-budgeted caches of block entries: scan-resistant S3-FIFO, and plain LRU to compare.

S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP'23) keeps three
FIFO queues:

- **small** (about 10% of the budget): every new key enters here;
- **main** (the rest): keys that proved themselves;
- **ghost**: keys only (no values, not counted in ``used_bytes``) recently evicted from small,
  bounded to main's share of the budget by the sizes the keys had.

Each entry has a frequency counter in 0..3, bumped on every hit. When small is over its share,
its oldest entry leaves: with ``freq >= promote_at`` it moves to main, else it is evicted and
its key remembered in ghost. A key that is inserted while remembered in ghost goes straight to
main. Main evicts its oldest entry, except that an entry with ``freq > 0`` is reinserted at the
tail with ``freq - 1``. A scan of one-off keys therefore cycles through small and ghost and
never touches what main holds.

The paper's algorithm listing promotes at ``freq > 1``; its text (and ``promote_at=1``, the
default here) promotes entries hit at least once while in small.

Invariants (checked in ``tests/prefill_worker/test_eviction.py``), for both caches:

- ``used_bytes <= capacity_bytes`` after every operation; an item larger than the whole budget
  is rejected (``put`` returns ``[]``, the cache is unchanged, ``rejections`` counts it);
- ``used_bytes`` is the sum of the sizes of the entries present;
- ``hits + misses`` is the number of ``get`` calls; ``insertions - evictions == len(cache)``,
  and ``evictions`` is the number of keys ``put`` has returned as evicted.

Every public method holds the cache's lock, so an engine thread and an I/O thread may share one
cache. ``in`` and ``len`` do not count as accesses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

MAX_FREQ = 3
DEFAULT_SMALL_FRACTION = 0.1

_SMALL = 0
_MAIN = 1


@dataclass
class _Entry:
    value: Any
    nbytes: int
    freq: int = 0
    queue: int = _SMALL


def _check_size(nbytes: int) -> None:
    if nbytes < 0:
        raise ValueError(f"an entry's size must be >= 0 bytes, got {nbytes}")


class _BudgetedCache:
    """What both caches share: the byte budget, the lock, the counters and membership."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be > 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._entries: dict[Hashable, Any] = {}
        self._used = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.insertions = 0
        self.evictions = 0
        self.rejections = 0

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries


class S3FifoCache(_BudgetedCache):
    """S3-FIFO over ``capacity_bytes``; see the module docstring for the rules and invariants."""

    def __init__(self, capacity_bytes: int, small_fraction: float = DEFAULT_SMALL_FRACTION,
                 promote_at: int = 1) -> None:
        super().__init__(capacity_bytes)
        if not 0.0 < small_fraction < 1.0:
            raise ValueError(f"small_fraction must be in (0, 1), got {small_fraction}")
        if not 1 <= promote_at <= MAX_FREQ:
            raise ValueError(f"promote_at must be in 1..{MAX_FREQ}, got {promote_at}")
        self.small_target = max(1, int(capacity_bytes * small_fraction))
        self.ghost_capacity = capacity_bytes - self.small_target
        self.promote_at = promote_at
        self._entries: dict[Hashable, _Entry] = {}
        self._small: OrderedDict[Hashable, None] = OrderedDict()
        self._main: OrderedDict[Hashable, None] = OrderedDict()
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()  # key -> bytes it is charged
        self._small_bytes = 0
        self._ghost_bytes = 0

    def get(self, key: Hashable) -> Any | None:
        """The value for ``key`` (a hit: its frequency goes up, capped at 3), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            entry.freq = min(entry.freq + 1, MAX_FREQ)
            return entry.value

    def put(self, key: Hashable, value: Any, nbytes: int) -> list[Hashable]:
        """Store ``value`` under ``key``; return the keys evicted to make room.

        A present key keeps its queue and frequency and takes the new value and size. A new
        key enters main if ghost remembers it, else small."""
        _check_size(nbytes)
        with self._lock:
            if nbytes > self.capacity_bytes:
                self.rejections += 1
                return []
            entry = self._entries.get(key)
            if entry is not None:
                self._resize(entry, nbytes)
                entry.value = value
                return self._evict_until(0)
            evicted = self._evict_until(nbytes)
            if key in self._ghost:
                self._ghost_bytes -= self._ghost.pop(key)
                self._entries[key] = _Entry(value, nbytes, queue=_MAIN)
                self._main[key] = None
            else:
                self._entries[key] = _Entry(value, nbytes)
                self._small[key] = None
                self._small_bytes += nbytes
            self._used += nbytes
            self.insertions += 1
            return evicted

    def _resize(self, entry: _Entry, nbytes: int) -> None:
        delta = nbytes - entry.nbytes
        entry.nbytes = nbytes
        self._used += delta
        if entry.queue == _SMALL:
            self._small_bytes += delta

    def _evict_until(self, incoming: int) -> list[Hashable]:
        """Evict until ``incoming`` more bytes fit. Terminates: each step removes an entry,
        moves one from small to main, or lowers a main entry's frequency."""
        evicted: list[Hashable] = []
        while self._used + incoming > self.capacity_bytes:
            if self._small and (self._small_bytes > self.small_target or not self._main):
                self._evict_small(evicted)
            else:
                self._evict_main(evicted)
        self.evictions += len(evicted)
        return evicted

    def _evict_small(self, evicted: list[Hashable]) -> None:
        key, _ = self._small.popitem(last=False)
        entry = self._entries[key]
        self._small_bytes -= entry.nbytes
        if entry.freq >= self.promote_at:
            entry.queue = _MAIN
            self._main[key] = None
            return
        del self._entries[key]
        self._used -= entry.nbytes
        evicted.append(key)
        charge = max(entry.nbytes, 1)  # so that zero-byte keys cannot grow ghost unbounded
        self._ghost[key] = charge
        self._ghost_bytes += charge
        while self._ghost_bytes > self.ghost_capacity:
            _, size = self._ghost.popitem(last=False)
            self._ghost_bytes -= size

    def _evict_main(self, evicted: list[Hashable]) -> None:
        key, _ = self._main.popitem(last=False)
        entry = self._entries[key]
        if entry.freq > 0:
            entry.freq -= 1
            self._main[key] = None
            return
        del self._entries[key]
        self._used -= entry.nbytes
        evicted.append(key)


class LRUCache(_BudgetedCache):
    """Least-recently-used over ``capacity_bytes``: same API, counters and invariants as
    ``S3FifoCache``; a ``get`` hit or a ``put`` makes the key the most recent."""

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, nbytes: int) -> list[Hashable]:
        _check_size(nbytes)
        with self._lock:
            if nbytes > self.capacity_bytes:
                self.rejections += 1
                return []
            old = self._entries.pop(key, None)
            if old is not None:
                self._used -= old[1]
            else:
                self.insertions += 1
            evicted: list[Hashable] = []
            while self._used + nbytes > self.capacity_bytes:
                old_key, (_, size) = self._entries.popitem(last=False)
                self._used -= size
                evicted.append(old_key)
            self._entries[key] = (value, nbytes)
            self._used += nbytes
            self.evictions += len(evicted)
            return evicted
