"""The routing simulator: traces, the cluster model, the four policies, the CLI."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from router.rendezvous import ranked
from router.simulate import (
    CacheAwareConfig,
    CacheAwarePolicy,
    Cluster,
    LivePrefixPolicy,
    PrefixPolicy,
    Request,
    SimConfig,
    TenantTree,
    Trace,
    chain_blocks,
    leading_key,
    main,
    multiturn_trace,
    read_mooncake,
    simulate,
    system_prompts_trace,
    zipf_sampler,
)

SAMPLE = Path(__file__).with_name("mooncake_sample.jsonl")


@pytest.fixture(scope="module")
def prompts_trace() -> Trace:
    return system_prompts_trace(4000, seed=1)


def test_chain_blocks_hashes_full_blocks_and_continues_from_known_keys() -> None:
    tokens = list(range(50))
    keys = chain_blocks(tokens, 16)
    assert len(keys) == 3  # the partial tail (2 tokens) is not a block
    assert chain_blocks(tokens, 16, keys[:2]) == keys
    assert chain_blocks(tokens + [7] * 14, 16)[:3] == keys  # extending keeps the prefix
    other = chain_blocks([99] + tokens[1:], 16)
    assert all(a != b for a, b in zip(keys, other, strict=True))  # keys are chained


def test_traces_are_deterministic_and_shaped_as_described() -> None:
    a, b = system_prompts_trace(300, seed=5), system_prompts_trace(300, seed=5)
    assert a == b and a != system_prompts_trace(300, seed=6)
    assert all(1024 + 32 <= r.input_tokens <= 1024 + 160 for r in a.requests)
    arrivals = [r.arrival for r in a.requests]
    assert arrivals == sorted(arrivals)
    heads = Counter(r.blocks[0] for r in a.requests)
    assert heads.most_common(1)[0][1] > 300 / 128 * 5  # Zipf: one prompt dominates

    turns = multiturn_trace(400, seed=2, active_sessions=4)
    assert turns == multiturn_trace(400, seed=2, active_sessions=4)
    grew = 0
    by_prefix: dict[int, Request] = {}
    for r in turns.requests:  # a later turn extends an earlier prompt of its session
        earlier = [p for p in by_prefix.values() if p.blocks == r.blocks[:len(p.blocks)]
                   and len(p.blocks) > 64]
        grew += bool(earlier)
        by_prefix[r.blocks[-1]] = r
    assert grew > 250


def test_zipf_sampler_prefers_low_ranks() -> None:
    draw = zipf_sampler(random.Random(0), 10, 1.1)
    counts = Counter(draw() for _ in range(20_000))
    assert set(counts) <= set(range(10))
    assert counts[0] > counts[1] > counts[4] > counts[9]


def test_mooncake_reader_parses_the_sample() -> None:
    trace = read_mooncake(SAMPLE)
    assert trace.block_size == 512 and len(trace.requests) == 8  # the blank line is skipped
    first = trace.requests[0]
    assert (first.arrival, first.input_tokens, first.output_tokens, first.blocks) == \
        (0.0, 1500, 40, (0, 1, 2))
    assert [r.arrival for r in trace.requests] == sorted(r.arrival for r in trace.requests)
    assert read_mooncake(SAMPLE, limit=3).requests == trace.requests[:3]
    result = simulate(trace, "prefix", SimConfig(workers=2, cache_blocks=64))
    assert result.requests == 8 and result.hit_rate > 0.4


def test_mooncake_reader_names_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
                   '{"timestamp": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        read_mooncake(bad)


def test_runs_are_deterministic(prompts_trace: Trace) -> None:
    config = SimConfig(workers=8, cache_blocks=512)
    for policy in ("prefix", "cache_aware", "round_robin", "least_load", "prefix_live"):
        assert simulate(prompts_trace, policy, config) == simulate(prompts_trace, policy, config)


def test_prefix_beats_round_robin_on_shared_system_prompts(prompts_trace: Trace) -> None:
    config = SimConfig(workers=8, cache_blocks=1024)
    ours = simulate(prompts_trace, "prefix", config)
    rr = simulate(prompts_trace, "round_robin", config)
    assert ours.hit_rate > rr.hit_rate + 0.1
    assert ours.max_mean_load <= 1.25 + 0.05


def test_prefix_load_bound_holds_at_64_workers(prompts_trace: Trace) -> None:
    result = simulate(prompts_trace, "prefix", SimConfig(workers=64))
    assert result.max_mean_load <= 1.25 + 0.05
    assert result.hit_rate > 0.8


def test_cluster_index_matches_the_caches(prompts_trace: Trace) -> None:
    config = SimConfig(workers=4, cache_blocks=300)
    cluster = Cluster(config, prompts_trace.block_size)
    policy = PrefixPolicy(1.25)
    for request in prompts_trace.requests[:500]:
        cluster.advance(request.arrival)
        cluster.assign(request, policy.choose(request, cluster))
    for key, workers in cluster.holders.items():
        assert workers and all(key in cluster.caches[w] for w in workers)
    assert sum(len(w) for w in cluster.holders.values()) == sum(len(c) for c in cluster.caches)
    assert all(len(c) <= 300 for c in cluster.caches)
    assert cluster.total_assigned == pytest.approx(sum(cluster.assigned))


def test_cluster_queues_work_fifo() -> None:
    cluster = Cluster(SimConfig(workers=1, overhead_tokens=10), block_size=4)
    request = Request(0.0, (1, 2, 3), input_tokens=12)
    assert cluster.assign(request, 0) == (0, 22.0)  # cold: 12 tokens + overhead
    assert cluster.assign(request, 0) == (3, 32.0)  # all cached: overhead only, queued
    assert cluster.outstanding == [2]
    cluster.advance(22.0)
    assert cluster.outstanding == [1] and cluster.work_loads() == [10.0]
    assert cluster.prefix_holders((1, 2, 9)) == [{0}, {0}]


def _cluster_with(blocks_by_worker: dict[int, tuple[int, ...]], workers: int = 4) -> Cluster:
    cluster = Cluster(SimConfig(workers=workers, overhead_tokens=0), block_size=1)
    for worker, blocks in blocks_by_worker.items():
        cluster.assign(Request(0.0, blocks, len(blocks)), worker)
    return cluster


def test_prefix_policy_prefers_the_longest_match_then_the_less_loaded() -> None:
    cluster = _cluster_with({0: (1, 2), 1: (1, 2, 3), 2: (1, 2, 3), 3: (9,)})
    cluster.assign(Request(0.0, (5, 6), 2), 1)  # worker 1 is now more loaded than worker 2
    policy = PrefixPolicy(bound=10.0)  # a loose bound: only the match decides
    assert policy.choose(Request(0.0, (1, 2, 3, 4), 4), cluster) == 2
    assert policy.choose(Request(0.0, (1, 2, 7), 3), cluster) == 0


def test_prefix_policy_spills_past_an_overloaded_holder_in_rendezvous_order() -> None:
    prefix = tuple(range(100))
    base = {w: tuple(range(1000 * (w + 1), 1000 * (w + 1) + 1000)) for w in range(4)}
    cluster = _cluster_with(base)  # every worker has 1000 tokens of work, none shared
    cluster.assign(Request(0.0, prefix, 100), 0)
    policy = PrefixPolicy(bound=1.25)
    hot = Request(0.0, prefix + (7,), 101)
    assert policy.choose(hot, cluster) == 0  # a cheap hit that keeps it within the bound
    cluster.assign(Request(0.0, (1, 2, 3), 500), 0)  # now 1600 against a mean of 1150
    order = [int(n) for n in ranked(leading_key(hot), [str(i) for i in range(4)])]
    assert policy.choose(hot, cluster) == next(w for w in order if w != 0)
    assert PrefixPolicy(bound=2.0).choose(hot, cluster) == 0


def test_prefix_bound_holds_once_the_mean_covers_a_request(prompts_trace: Trace) -> None:
    config = SimConfig(workers=16, overhead_tokens=16)
    cluster = Cluster(config, prompts_trace.block_size)
    policy = PrefixPolicy(1.25)
    largest = max(r.input_tokens for r in prompts_trace.requests) + config.overhead_tokens
    settled_at = None
    for request in prompts_trace.requests:
        cluster.advance(request.arrival)
        cluster.assign(request, policy.choose(request, cluster))
        mean = cluster.total_assigned / cluster.size
        ratio = max(cluster.assigned) / mean
        if settled_at is None and mean >= largest / (1.25 - 1):
            settled_at = ratio
        elif settled_at is not None:
            assert ratio <= max(1.25, settled_at) + 1e-9
    assert settled_at is not None


def test_live_prefix_policy_matches_router_policy_rule() -> None:
    cluster = _cluster_with({0: (1, 2, 3), 1: (1, 2), 2: (5,)})
    policy = LivePrefixPolicy(bound=1.25)
    assert policy.choose(Request(0.0, (1, 2, 3, 4), 4), cluster) == 0
    cluster.outstanding[:] = [3, 0, 0, 0]  # worker 0 is over ceil(1.25 x 4 / 4) = 2
    assert policy.choose(Request(0.0, (1, 2, 3, 4), 4), cluster) == 1


def test_tenant_tree_invariants_hold_under_random_inserts() -> None:
    rng = random.Random(4)
    tree = TenantTree(tenants=3, max_blocks=40, rank=[2, 0, 1])
    prefixes = [tuple(rng.randrange(10**6) for _ in range(8)) for _ in range(5)]
    for _ in range(400):
        blocks = rng.choice(prefixes) + tuple(rng.randrange(10**6) for _ in range(rng.randrange(6)))
        tenant = rng.randrange(3)
        tree.prefix_match(blocks)
        tree.insert(blocks, tenant)
        assert tree.size[tenant] <= 40
    counted = [0, 0, 0]
    stack = list(tree.root.children.values())
    while stack:
        node = stack.pop()
        assert node.tenants and set(node.tenants) <= set(node.parent.tenants)
        for t in node.tenants:
            counted[t] += 1
        stack.extend(node.children.values())
    assert counted == tree.size


def test_tenant_tree_match_and_smallest_tenant() -> None:
    tree = TenantTree(tenants=3, max_blocks=100, rank=[1, 0, 2])  # worker 1 iterates first
    assert tree.prefix_match((1, 2)) == (0, 1)
    assert tree.smallest_tenant() == 1
    tree.insert((1, 2, 3), 2)
    tree.insert((1, 2), 0)
    assert tree.prefix_match((1, 2, 3, 4)) == (3, 2)
    assert tree.prefix_match((1, 2, 5)) == (2, 0)  # both hold (1, 2): worker 0 comes first
    assert tree.smallest_tenant() == 1


def test_cache_aware_follows_matches_smallest_trees_and_imbalance() -> None:
    policy = CacheAwarePolicy(workers=3, max_blocks=100, seed=0)
    cluster = Cluster(SimConfig(workers=3), block_size=16)
    prompt = Request(0.0, tuple(range(8)), 8 * 16)
    first = policy.choose(prompt, cluster)
    assert policy.choose(prompt, cluster) == first  # match rate 1.0 > 0.5
    other = policy.choose(Request(0.0, (100, 101), 32), cluster)
    assert other != first  # no match: the smallest tree (an empty one)
    short_match = Request(0.0, (0, 200, 201, 202), 64)  # match rate 0.25 <= 0.5
    assert policy.choose(short_match, cluster) not in (first, other)
    cluster.outstanding[:] = [40, 5, 7]  # imbalanced: max - min > 32 and max > min
    assert policy.choose(prompt, cluster) == 1
    balanced = CacheAwarePolicy(3, 100, CacheAwareConfig(balance_abs_threshold=100))
    balanced.choose(prompt, cluster)
    assert balanced.choose(prompt, cluster) == balanced.tree.prefix_match(prompt.blocks)[1]


def test_cli_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--workers", "4", "16", "--requests", "300", "--policies", "prefix",
                 "round_robin", "--trace", "multiturn"]) == 0
    out = capsys.readouterr().out
    assert "max/mean load" in out
    assert sum(line.startswith("multiturn") for line in out.splitlines()) == 4
    assert main(["--workers", "2", "--trace", "mooncake", "--trace-file", str(SAMPLE)]) == 0
    with pytest.raises(SystemExit):
        main(["--trace", "mooncake"])
