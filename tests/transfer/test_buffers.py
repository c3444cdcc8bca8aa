"""Receive-buffer pool: size classes, reuse, capacity bound, and staging hands buffers back."""

import torch

from transfer.buffers import MIN_POOLED, BufferPool, size_class
from transfer.staging import StagedFrame, StagingStore


def test_size_classes_are_powers_of_two_at_least_the_request():
    for n in (MIN_POOLED, MIN_POOLED + 1, 6_291_456, 6_291_457):
        size = size_class(n)
        assert size >= n and size & (size - 1) == 0 and size < 2 * n


def test_released_buffers_are_reused_and_capacity_is_bounded():
    pool = BufferPool(capacity_bytes=1 << 20)
    buffer, view = pool.acquire(300_000)
    assert len(view) == 300_000 and len(buffer) == size_class(300_000)
    pool.release(buffer)
    again, _ = pool.acquire(280_000)  # same class
    assert again is buffer and pool.hits == 1
    big, _ = pool.acquire(2 << 20)
    pool.release(big)  # beyond capacity: dropped
    assert pool.idle_bytes == 0


def test_staging_returns_buffers_on_fail_and_recycle():
    store = StagingStore(budget_bytes=1 << 30, ttl_s=60)
    buffers = []
    for tid in ("a", "b"):
        buffer, view = store.pool.acquire(1 << 20)
        buffers.append(buffer)
        tensor = torch.frombuffer(view, dtype=torch.uint8)
        store.add_frame(tid, StagedFrame(0, 0, 1, tensor, len(view), 0.0, buffer))
        store.end(tid, 1, {})
    store.fail("a", "test")
    assert store.pool.idle_bytes == len(buffers[0])
    staged = store.take("b")
    store.recycle(staged)
    assert store.pool.idle_bytes == len(buffers[0]) + len(buffers[1])
    assert store.staged_bytes == 0
