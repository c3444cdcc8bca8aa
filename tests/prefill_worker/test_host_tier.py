"""Host tier halves without vLLM processes: directory arithmetic, store, load, eviction."""

import torch

from prefill_worker.host_tier import BlockRun, HostTier, TierDelta, TierDirectory

LAYERS, HEADS, BS, WIDTH = 3, 2, 4, 8


def caches(blocks: int = 16) -> list[torch.Tensor]:
    return [torch.zeros(blocks, HEADS, BS, WIDTH) for _ in range(LAYERS)]


def test_directory_counts_consecutive_hits_and_leaves_the_last_token():
    directory = TierDirectory(block_size=BS)
    hashes = [bytes([i]) * 4 for i in range(5)]
    directory.apply(TierDelta(stored=hashes[:4]))
    # 5 full blocks = 20 tokens; vLLM computed block 0 itself
    assert directory.loadable_blocks(hashes, BS, 20) == 3  # blocks 1..3; block 4 not stored
    directory.apply(TierDelta(stored=[hashes[4]]))
    assert directory.loadable_blocks(hashes, BS, 20) == 3  # block 4 holds the last token
    assert directory.loadable_blocks(hashes, BS, 21) == 4
    directory.apply(TierDelta(evicted=[hashes[2]]))
    assert directory.loadable_blocks(hashes, BS, 21) == 1


def test_collected_blocks_round_trip_through_the_tier():
    source = caches()
    for layer, cache in enumerate(source):
        cache.copy_(torch.randn_like(cache) + layer)
    tier = HostTier(capacity_bytes=1 << 20)
    run = BlockRun("r", [3, 7], [b"h3", b"h7"])
    for layer, cache in enumerate(source):
        tier.collect(layer, cache, [run])
    tier.commit([run])
    delta = tier.take_delta()
    assert delta is not None and delta.stored == [b"h3", b"h7"] and tier.take_delta() is None
    target = caches()
    failed = tier.load(target, BlockRun("r2", [0, 1], [b"h3", b"h7"]))
    assert failed == set()
    for layer in range(LAYERS):
        assert torch.equal(target[layer][0], source[layer][3])
        assert torch.equal(target[layer][1], source[layer][7])
    assert tier.load(target, BlockRun("r3", [5], [b"missing"])) == {5}


def test_tier_respects_its_budget_and_reports_evictions():
    entry_bytes = LAYERS * HEADS * BS * WIDTH * 4
    tier = HostTier(capacity_bytes=3 * entry_bytes)
    source = caches()
    stored, evicted = [], []
    for i in range(10):
        run = BlockRun("r", [i], [f"h{i}".encode()])
        for layer, cache in enumerate(source):
            tier.collect(layer, cache, [run])
        tier.commit([run])
        delta = tier.take_delta()
        stored += delta.stored
        evicted += delta.evicted
        assert tier.cache.used_bytes <= 3 * entry_bytes
    assert len(stored) - len(evicted) == len(tier.cache)
