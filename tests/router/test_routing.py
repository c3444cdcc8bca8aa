"""Router: block hashes, prefix index, policies, load bound, send-only-missing decisions."""

import time

import pytest

from router.block_hash import block_hashes, event_key, none_hash
from router.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch
from router.policy import Router, RouterConfig
from router.prefix_index import PrefixIndex
from router.rendezvous import choose_bounded, ranked
from router.workers import Pools

BS = 128


def tokens(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 104729) % 49000 for i in range(n)]


def keys_of(token_ids: list[int]) -> list[int]:
    return [event_key(h) for h in block_hashes(token_ids, BS)]


def stored(keys: list[int]) -> KVEventBatch:
    return KVEventBatch(ts=0.0, events=[BlockStored(block_hashes=keys, parent_block_hash=None,
                                                    token_ids=[], block_size=BS)])


def test_block_hashes_match_vllms_own_function():
    from vllm.utils.hashing import sha256
    from vllm.v1.core import kv_cache_utils

    kv_cache_utils.init_none_hash(sha256)
    ids = tokens(1, 3 * BS + 17)
    parent, expected = None, []
    for start in range(0, 3 * BS, BS):
        parent = kv_cache_utils.hash_block_tokens(sha256, parent, ids[start:start + BS], None)
        expected.append(parent)
    assert block_hashes(ids, BS) == expected
    assert none_hash() == kv_cache_utils.NONE_HASH
    assert block_hashes(ids[:BS - 1], BS) == []


def test_prefix_index_matches_only_unbroken_prefixes():
    index = PrefixIndex()
    keys = keys_of(tokens(2, 5 * BS))
    index.apply("w", stored([keys[0], keys[1], keys[3]]))
    assert index.match("w", keys) == 2
    index.apply("w", KVEventBatch(0.0, [BlockRemoved(block_hashes=[keys[0]])]))
    assert index.match("w", keys) == 0
    index.apply("w", stored(keys))
    assert index.match("w", keys) == 5
    index.apply("w", KVEventBatch(0.0, [AllBlocksCleared()]))
    assert index.match("w", keys) == 0 and index.match("unknown", keys) == 0


def test_optimistic_entries_expire_unless_confirmed():
    index = PrefixIndex(optimistic_ttl_s=5)
    keys = keys_of(tokens(3, 3 * BS))
    index.note_routed("w", keys)
    now = time.monotonic()
    assert index.match("w", keys, now=now) == 3
    assert index.match("w", keys, now=now + 6) == 0
    index.note_routed("w", keys)
    index.apply("w", stored(keys[:2]))
    assert index.match("w", keys, now=time.monotonic() + 6) == 2


def make_router(prefill: int = 2, decode: int = 1, **config) -> Router:
    pools = Pools.from_urls([f"http://p{i}" for i in range(prefill)],
                            [f"http://d{i}" for i in range(decode)],
                            [f"127.0.0.1:{15000 + i}" for i in range(decode)])
    return Router(pools, RouterConfig(block_size=BS, **config))


def test_prefix_policy_prefers_the_worker_holding_the_prefix():
    router = make_router(prefill=3)
    prompt = tokens(4, 6 * BS)
    router.index.apply("prefill-2", stored(keys_of(prompt)[:4]))
    decision = router.route(prompt)
    assert decision.prefill.name == "prefill-2" and decision.prefill_matched_blocks == 4


def test_load_bound_overrides_affinity():
    router = make_router(prefill=2)
    prompt = tokens(5, 6 * BS)
    router.index.apply("prefill-0", stored(keys_of(prompt)))
    router.pools.prefill[0].in_flight = 5  # far above 1.25 x mean
    assert router.route(prompt).prefill.name == "prefill-1"


def test_short_or_decode_cached_prompts_prefill_locally_and_send_only_missing():
    router = make_router(remote_prefill_threshold=256)
    assert router.route(tokens(6, 100)).prefill is None
    prompt = tokens(7, 10 * BS)
    router.index.apply("decode-0", stored(keys_of(prompt)[:6]))
    decision = router.route(prompt)
    assert decision.decode_cached_blocks == 6
    assert decision.uncached_tokens == 4 * BS and decision.prefill is not None
    router.index.apply("decode-0", stored(keys_of(prompt)))  # all 10 blocks held
    assert router.route(prompt + [1, 2, 3]).prefill is None


def test_decode_is_credited_with_what_it_was_just_sent():
    router = make_router()
    prompt = tokens(10, 4 * BS)
    assert router.route(prompt).prefill is not None
    assert router.route(prompt).prefill is None  # optimistic: decode now holds the prompt


def test_round_robin_and_least_load_policies():
    router = make_router(prefill=3, policy="round_robin")
    names = [router.route(tokens(80 + i, 4 * BS)).prefill.name for i in range(6)]
    assert names == ["prefill-0", "prefill-1", "prefill-2"] * 2
    router = make_router(prefill=3, policy="least_load")
    router.pools.prefill[0].in_flight = 2
    router.pools.prefill[1].in_flight = 1
    assert router.route(tokens(9, 4 * BS)).prefill.name == "prefill-2"
    with pytest.raises(ValueError):
        make_router(policy="random")


def test_unknown_prefixes_spread_and_membership_changes_move_few():
    names = [f"prefill-{i}" for i in range(8)]
    keys = [bytes([i % 256, i // 256]) * 4 for i in range(2000)]
    before = {k: ranked(k, names)[0] for k in keys}
    counts = {n: list(before.values()).count(n) for n in names}
    assert min(counts.values()) > 2000 / 8 * 0.7
    after = {k: ranked(k, names[:-1])[0] for k in keys}
    moved = sum(before[k] != after[k] for k in keys)
    assert moved == counts["prefill-7"]  # only the removed worker's keys move


def test_bounded_choice_always_finds_a_worker():
    loads = {"a": 10, "b": 0, "c": 0}
    assert choose_bounded(b"key", loads, 1.25) in {"b", "c"}
    assert choose_bounded(b"key", {"a": 0}, 1.0) == "a"
