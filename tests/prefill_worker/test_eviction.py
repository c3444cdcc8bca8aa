"""S3-FIFO and LRU block caches: the byte budget, scan resistance, counters, thread safety."""

from __future__ import annotations

import random
import threading

import pytest

from prefill_worker.eviction import LRUCache, S3FifoCache

CACHES = [S3FifoCache, LRUCache]


def _present_bytes(cache: S3FifoCache | LRUCache, sizes: dict[int, int]) -> int:
    return sum(size for key, size in sizes.items() if key in cache)


@pytest.mark.parametrize("make", CACHES)
@pytest.mark.parametrize("seed", range(8))
def test_budget_never_exceeded_under_random_workloads(make, seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([1, 7, 100, 1000])
    cache = make(capacity)
    sizes: dict[int, int] = {}  # the size each key was last stored with
    gets = returned = 0
    for _ in range(3000):
        key = int(rng.paretovariate(1.0)) % 200 if rng.random() < 0.7 else rng.randrange(10**6)
        if rng.random() < 0.5:
            gets += 1
            cache.get(key)
        else:
            size = rng.randint(0, max(1, capacity // 3)) if rng.random() < 0.95 \
                else rng.randint(capacity + 1, 2 * capacity + 1)
            evicted = cache.put(key, f"v{key}", size)
            returned += len(evicted)
            if size <= capacity:
                sizes[key] = size
            for gone in evicted:
                assert gone not in cache
        assert 0 <= cache.used_bytes <= capacity
        assert cache.used_bytes == _present_bytes(cache, sizes)
    assert cache.hits + cache.misses == gets
    assert cache.evictions == returned
    assert cache.insertions - cache.evictions == len(cache)


@pytest.mark.parametrize("make", CACHES)
def test_item_larger_than_capacity_is_rejected(make) -> None:
    cache = make(10)
    assert cache.put("a", 1, 4) == []
    assert cache.put("big", 2, 11) == []
    assert "big" not in cache and "a" in cache
    assert cache.used_bytes == 4 and cache.rejections == 1
    assert cache.put("a", 3, 11) == []  # a too-large update leaves the old entry alone
    assert cache.get("a") == 1
    with pytest.raises(ValueError):
        cache.put("neg", 0, -1)


@pytest.mark.parametrize("make", CACHES)
def test_update_changes_value_and_size(make) -> None:
    cache = make(10)
    cache.put("a", 1, 3)
    cache.put("b", 2, 3)
    assert cache.put("a", 9, 5) == []
    assert cache.get("a") == 9 and cache.used_bytes == 8 and len(cache) == 2
    assert cache.insertions == 2


def _warm_then_scan(cache: S3FifoCache | LRUCache, hot: list[str], scan_keys: int) -> None:
    for _ in range(5):  # the hot prefix, accessed repeatedly
        for key in hot:
            if cache.get(key) is None:
                cache.put(key, key, 1)
    for i in range(scan_keys):  # one-off keys, far more bytes than the budget
        key = f"scan-{i}"
        if cache.get(key) is None:
            cache.put(key, key, 1)


def test_hot_prefix_survives_a_scan_under_s3fifo_but_not_lru() -> None:
    hot = [f"hot-{i}" for i in range(5)]
    s3, lru = S3FifoCache(100), LRUCache(100)
    _warm_then_scan(s3, hot, scan_keys=1000)
    _warm_then_scan(lru, hot, scan_keys=1000)
    assert all(key in s3 for key in hot)
    assert not any(key in lru for key in hot)
    hits_before = s3.hits
    assert all(s3.get(key) == key for key in hot)
    assert s3.hits == hits_before + len(hot)


def test_hot_prefix_survives_repeated_scans_with_variable_sizes() -> None:
    rng = random.Random(3)
    cache = S3FifoCache(10_000)
    hot = {f"hot-{i}": 100 for i in range(20)}  # 2000 bytes, a fifth of the budget
    for round_ in range(10):
        for key, size in hot.items():
            for _ in range(2):
                if cache.get(key) is None:
                    cache.put(key, key, size)
        for i in range(300):  # about 3x the budget per round
            cache.put(f"scan-{round_}-{i}", None, rng.randint(50, 150))
        assert all(key in cache for key in hot), round_
        assert cache.used_bytes <= cache.capacity_bytes


def test_ghost_key_returns_straight_to_main() -> None:
    cache = S3FifoCache(10)  # small holds 1 byte, main 9
    cache.put("x", 1, 1)
    cache.put("y", 2, 1)
    for i in range(9):
        cache.put(f"f{i}", i, 1)  # fills past the budget: x is evicted from small to ghost
    assert "x" not in cache
    cache.put("x", 1, 1)  # remembered by ghost: enters main
    for i in range(20):
        cache.put(f"g{i}", i, 1)  # a scan evicts through small only, once main is full
    assert "x" in cache


def test_counters_hits_misses_evictions() -> None:
    for make in CACHES:
        cache = make(5)
        gets = evicted_total = 0
        for i in range(50):
            gets += 1
            if cache.get(i % 8) is None:
                evicted_total += len(cache.put(i % 8, i, 1))
        assert cache.hits + cache.misses == gets
        assert cache.evictions == evicted_total
        assert cache.insertions - cache.evictions == len(cache) <= 5


@pytest.mark.parametrize("make", CACHES)
def test_concurrent_use_keeps_the_invariants(make) -> None:
    cache = make(500)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(2000):
            key = rng.randrange(300)
            if cache.get(key) is None:
                cache.put(key, key, rng.randint(1, 20))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.used_bytes <= 500
    assert cache.hits + cache.misses == 8000
    assert cache.insertions - cache.evictions == len(cache)
