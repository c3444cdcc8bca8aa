"""Replay a request trace against N simulated prefill workers and compare routing policies.

Run ``python -m router.simulate --workers 8 64 1024 --trace system_prompts --requests 4000``.

The model, stated once:

- **Blocks.** A request is the chained keys of its prompt's full blocks (equal keys mean an
  equal prefix up to and including that block, as with vLLM's block hashes). Synthetic traces
  chain Python's (deterministic) tuple hash instead of sha256: the simulator needs only the
  equality semantics, and it is ~9x faster. A Mooncake trace's ``hash_ids`` are used as they
  are, one id per block of 512 tokens.
- **Worker cache.** Each worker holds at most ``cache_blocks`` blocks, LRU by default (vLLM's
  free-block queue), or S3-FIFO (``prefill_worker.eviction``). A request hits the contiguous run of
  its leading blocks that the chosen worker holds (vLLM's prefix semantics); its blocks are
  then admitted tail first, so a prompt's head is the most recent. Caches change when a
  request is assigned: each worker serves FIFO, so a queued request finds its predecessors'
  blocks computed. Only prompt blocks are cached; a prefill worker never holds output KV.
- **Load.** Time is in token-times (one token of prefill on one worker). A request costs
  ``uncached_tokens + overhead_tokens`` of work; each worker is a FIFO single server, so its
  load when a request arrives is its *outstanding work*, ``max(0, busy_until - now)``, which
  ``least_load`` minimises. SGLang's ``cache_aware`` sees what sgl-router sees instead, the
  number of outstanding requests. Arrivals are rescaled so that the offered load, counting
  every prompt token as uncached, is ``utilization x workers``; caching makes it lower.
- **Metrics** (the same for every policy). ``hit rate`` = prompt blocks found in the chosen
  worker's cache / all prompt blocks. ``max/mean load`` = the most work any worker was given
  over the run / the mean work per worker: how much busier than average the busiest worker
  was (a ratio of busy times, so it does not swing with the momentary queue lengths of a
  lightly loaded cluster; it needs many requests per worker to settle, since one miss is
  ~1000 tokens of work). ``TTFT`` is queueing plus prefill, in ms at ``tokens_per_s``.

Policies: ``prefix`` (ours, ``PrefixPolicy``), ``cache_aware`` (a reimplementation of
sgl-router's, ``CacheAwarePolicy``), ``round_robin``, ``least_load``, and ``prefix_live``
(the live ``router.policy`` rule as it stands, ``LivePrefixPolicy``; not run by default).
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import math
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prefill_worker.eviction import LRUCache, S3FifoCache
from router.rendezvous import choose_bounded, ranked

MOONCAKE_BLOCK_TOKENS = 512
_LOW_64 = (1 << 64) - 1


# --------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Request:
    arrival: float  # trace time; the simulator rescales it
    blocks: tuple[int, ...]  # chained keys of the prompt's full blocks, first block first
    input_tokens: int
    output_tokens: int = 0


@dataclass(frozen=True)
class Trace:
    name: str
    block_size: int  # tokens per block
    requests: tuple[Request, ...]


def chain_blocks(tokens: Sequence[int], block_size: int,
                 known: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Chained keys of every full block of ``tokens``; ``known`` are already computed keys of
    its leading blocks (a prefix of the answer), so a growing conversation hashes only its
    new blocks."""
    keys = list(known)
    parent = keys[-1] if keys else 0
    for start in range(len(keys) * block_size, len(tokens) - block_size + 1, block_size):
        parent = hash((parent, tuple(tokens[start:start + block_size])))
        keys.append(parent)
    return tuple(keys)


def zipf_sampler(rng: random.Random, n: int, s: float) -> Callable[[], int]:
    """Draws ranks 0..n-1 with P(k) proportional to (k+1)^-s."""
    cumulative = list(itertools.accumulate((k + 1) ** -s for k in range(n)))
    total = cumulative[-1]
    return lambda: min(bisect.bisect_left(cumulative, rng.random() * total), n - 1)


def _tokens(rng: random.Random, count: int, vocab: int) -> list[int]:
    return [rng.randrange(vocab) for _ in range(count)]


def system_prompts_trace(requests: int, seed: int = 0, block_size: int = 16,
                         num_prompts: int = 128, prompt_tokens: int = 1024,
                         suffix_tokens: tuple[int, int] = (32, 160), zipf_s: float = 1.1,
                         vocab: int = 32_000) -> Trace:
    """``num_prompts`` shared system prompts with Zipf(``zipf_s``) popularity, each followed
    by a unique user suffix; Poisson arrivals at unit rate."""
    rng = random.Random(seed)
    prompts = [_tokens(rng, prompt_tokens, vocab) for _ in range(num_prompts)]
    prompt_keys = [chain_blocks(p, block_size) for p in prompts]
    pick = zipf_sampler(rng, num_prompts, zipf_s)
    now = 0.0
    out = []
    for _ in range(requests):
        now += rng.expovariate(1.0)
        k = pick()
        tokens = prompts[k] + _tokens(rng, rng.randint(*suffix_tokens), vocab)
        out.append(Request(now, chain_blocks(tokens, block_size, prompt_keys[k]), len(tokens),
                           rng.randint(64, 256)))
    return Trace("system_prompts", block_size, tuple(out))


@dataclass
class _Session:
    tokens: list[int]
    keys: tuple[int, ...]
    turns_left: int


def multiturn_trace(requests: int, seed: int = 0, block_size: int = 16,
                    num_system_prompts: int = 4, system_tokens: int = 1024,
                    active_sessions: int = 64, turns: tuple[int, int] = (2, 8),
                    user_tokens: tuple[int, int] = (32, 256),
                    output_tokens: tuple[int, int] = (64, 384), zipf_s: float = 1.1,
                    vocab: int = 32_000) -> Trace:
    """Chat sessions over a few shared system prompts (Zipf popularity). Turn t's prompt is
    turn t-1's prompt + its answer + a new user message, so the prefix grows; each arrival
    (Poisson, unit rate) is the next turn of a random one of ``active_sessions`` sessions, and
    a finished session is replaced by a new one."""
    rng = random.Random(seed)
    systems = [_tokens(rng, system_tokens, vocab) for _ in range(num_system_prompts)]
    system_keys = [chain_blocks(s, block_size) for s in systems]
    pick = zipf_sampler(rng, num_system_prompts, zipf_s)

    def new_session() -> _Session:
        k = pick()
        return _Session(list(systems[k]), system_keys[k], rng.randint(*turns))

    sessions = [new_session() for _ in range(active_sessions)]
    now = 0.0
    out = []
    for _ in range(requests):
        now += rng.expovariate(1.0)
        i = rng.randrange(active_sessions)
        session = sessions[i]
        session.tokens += _tokens(rng, rng.randint(*user_tokens), vocab)
        session.keys = chain_blocks(session.tokens, block_size, session.keys)
        answer = rng.randint(*output_tokens)
        out.append(Request(now, session.keys, len(session.tokens), answer))
        session.tokens += _tokens(rng, answer, vocab)
        session.turns_left -= 1
        if session.turns_left == 0:
            sessions[i] = new_session()
    return Trace("multiturn", block_size, tuple(out))


def read_mooncake(path: str | Path, limit: int | None = None) -> Trace:
    """A Mooncake-format JSONL trace: one request a line with ``timestamp`` (ms),
    ``input_length``, ``output_length`` and ``hash_ids`` (one id per 512-token block)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Request(float(row["timestamp"]) / 1000.0,
                                   tuple(int(h) for h in row["hash_ids"]),
                                   int(row["input_length"]), int(row["output_length"])))
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: not a Mooncake trace line ({e!r})") from e
            if limit is not None and len(out) >= limit:
                break
    out.sort(key=lambda r: r.arrival)
    return Trace(Path(path).stem, MOONCAKE_BLOCK_TOKENS, tuple(out))


# ---------------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class SimConfig:
    workers: int
    cache_blocks: int = 2048  # per worker
    cache_kind: str = "lru"  # or "s3fifo"
    utilization: float = 0.7  # offered load per worker, every prompt token uncached
    overhead_tokens: int = 16  # fixed work per request, in token-times
    tokens_per_s: float = 10_000.0  # a worker's prefill rate, for TTFT in ms only
    load_bound: float = 1.25  # ours: no worker above this x the mean assigned work
    seed: int = 0


class Cluster:
    """The simulated prefill workers: block caches, FIFO queues, and the exact index
    block key -> workers holding it (what KV events would give the live router).

    Invariant: ``worker in holders[key]`` iff ``key in caches[worker]``."""

    def __init__(self, config: SimConfig, block_size: int) -> None:
        n = config.workers
        self.config = config
        self.block_size = block_size
        make = {"lru": LRUCache, "s3fifo": S3FifoCache}[config.cache_kind]
        self.caches = [make(config.cache_blocks) for _ in range(n)]
        self.holders: dict[int, set[int]] = {}
        self.busy_until = [0.0] * n
        self.outstanding = [0] * n  # requests queued or in prefill
        self.assigned = [0.0] * n  # all work given to the worker so far
        self.total_assigned = 0.0
        self._completions: list[tuple[float, int]] = []
        self.now = 0.0

    @property
    def size(self) -> int:
        return len(self.caches)

    def advance(self, now: float) -> None:
        self.now = now
        while self._completions and self._completions[0][0] <= now:
            _, worker = heapq.heappop(self._completions)
            self.outstanding[worker] -= 1

    def work_loads(self) -> list[float]:
        now = self.now
        return [b - now if b > now else 0.0 for b in self.busy_until]

    def prefix_holders(self, blocks: Sequence[int]) -> list[set[int]]:
        """``levels[i]`` = the workers holding all of ``blocks[: i + 1]``; each level is a
        subset of the one before, and the list stops before the first empty one."""
        current = self.holders.get(blocks[0]) if blocks else None
        if not current:
            return []
        levels = [current]  # the live set: callers must not mutate levels
        for key in blocks[1:]:
            holders = self.holders.get(key)
            if not holders:
                break
            if not holders <= current:  # with prefix-closed caches (LRU) it always is
                holders = current & holders
                if not holders:
                    break
            current = holders
            levels.append(current)
        return levels

    def cached_prefix(self, worker: int, blocks: Sequence[int]) -> int:
        cache = self.caches[worker]
        hit = 0
        for key in blocks:
            if key not in cache:
                break
            hit += 1
        return hit

    def assign(self, request: Request, worker: int) -> tuple[int, float]:
        """Serve ``request`` on ``worker``: returns (blocks hit, finish time)."""
        hit = self.cached_prefix(worker, request.blocks)
        self._admit(worker, request.blocks)
        uncached = request.input_tokens - min(request.input_tokens, hit * self.block_size)
        work = uncached + self.config.overhead_tokens
        finish = max(self.now, self.busy_until[worker]) + work
        self.busy_until[worker] = finish
        self.assigned[worker] += work
        self.total_assigned += work
        self.outstanding[worker] += 1
        heapq.heappush(self._completions, (finish, worker))
        return hit, finish

    def _admit(self, worker: int, blocks: Sequence[int]) -> None:
        cache = self.caches[worker]
        holders = self.holders
        for key in reversed(blocks):
            if cache.get(key) is not None:
                continue
            for gone in cache.put(key, True, 1):
                owners = holders[gone]
                owners.discard(worker)
                if not owners:
                    del holders[gone]
            holders.setdefault(key, set()).add(worker)


# --------------------------------------------------------------------------------- policies


class Policy(Protocol):
    name: str

    def choose(self, request: Request, cluster: Cluster) -> int: ...


def leading_key(request: Request) -> bytes:
    return ((request.blocks[0] if request.blocks else request.input_tokens) & _LOW_64
            ).to_bytes(8, "big")


class PrefixPolicy:
    """Ours, in one line: *the longest cached prefix, unless that worker would go over
    ``bound`` x the mean work; then shorter prefixes; then the prompt's rendezvous order.*

    A worker *fits* a request when, given it, its assigned work stays within ``bound`` x the
    mean: ``(assigned[w] + work_w) * n <= bound * (total + work_w)``, where ``work_w`` is the
    request's work on ``w`` (uncached tokens + overhead: a hit is cheap, so a holder fits
    more often). Preference: the holders of the longest prefix (``Cluster.prefix_holders``),
    least loaded first, then the holders of each shorter prefix; then every worker in the
    rendezvous order of the leading block's key (``router.rendezvous.ranked``, the order
    ``choose_bounded`` walks, with this work-weighted bound instead of its one-unit-per-request
    one). If no worker fits (only early in a run, while one request is large against the
    mean), the least loaded worker.

    The load is the work assigned so far, the quantity ``max/mean load`` measures (the live
    router would keep a decayed sum of it). Invariant (tested): once the mean work per worker
    is at least ``largest request work / (bound - 1)`` (4 misses at ``bound=1.25``), the least
    loaded worker always fits, so every assignment keeps its worker within ``bound x mean``
    and ``max/mean`` never again exceeds ``max(bound, its value then)``."""

    name = "prefix"

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._rankings: dict[bytes, list[int]] = {}

    def _ranking(self, key: bytes, workers: int) -> list[int]:
        order = self._rankings.get(key)
        if order is None or len(order) != workers:
            if len(self._rankings) >= 1024:  # bounded: a ranking holds every worker
                self._rankings.clear()
            names = [str(i) for i in range(workers)]
            order = self._rankings[key] = [int(name) for name in ranked(key, names)]
        return order

    def choose(self, request: Request, cluster: Cluster) -> int:
        n = cluster.size
        bound = self.bound
        loads = cluster.assigned
        total = cluster.total_assigned
        overhead = cluster.config.overhead_tokens
        tokens = request.input_tokens
        levels = cluster.prefix_holders(request.blocks)
        deeper: set[int] = set()
        for depth in range(len(levels), 0, -1):
            level = levels[depth - 1]
            tier = level - deeper if deeper else level
            deeper = level
            if not tier:
                continue
            work = tokens - min(tokens, depth * cluster.block_size) + overhead
            best = min(tier, key=lambda w: (loads[w], w))
            if (loads[best] + work) * n <= bound * (total + work):
                return best
        work = tokens + overhead
        for w in self._ranking(leading_key(request), n):
            if (loads[w] + work) * n <= bound * (total + work):
                return w
        return loads.index(min(loads))

class LivePrefixPolicy:
    """``router.policy.Router.choose_prefill`` as it stands, for comparison: among workers
    with fewer outstanding requests than ``ceil(bound x (total + 1) / n)``, the longest
    match, then the fewest outstanding requests (then the least outstanding work, standing in
    for in-flight tokens); with no match anywhere, ``choose_bounded`` on the leading block's
    key over outstanding request counts."""

    name = "prefix_live"

    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._names: list[str] = []

    def choose(self, request: Request, cluster: Cluster) -> int:
        n = cluster.size
        counts = cluster.outstanding
        capacity = math.ceil(self.bound * (sum(counts) + 1) / n)
        work = cluster.work_loads()
        for level in reversed(cluster.prefix_holders(request.blocks)):
            eligible = [w for w in level if counts[w] < capacity]
            if eligible:
                return min(eligible, key=lambda w: (counts[w], work[w], w))
        if len(self._names) != n:
            self._names = [str(i) for i in range(n)]
        return int(choose_bounded(leading_key(request), dict(zip(self._names, counts,
                                                                 strict=True)), self.bound))


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(self, request: Request, cluster: Cluster) -> int:
        worker = self._next % cluster.size
        self._next += 1
        return worker


class LeastLoadPolicy:
    """The worker with the least outstanding work (the first such)."""

    name = "least_load"

    def choose(self, request: Request, cluster: Cluster) -> int:
        loads = cluster.work_loads()
        return loads.index(min(loads))


# ------------------------------------------------------------------ SGLang cache_aware


class _Node:
    __slots__ = ("key", "parent", "children", "tenants")

    def __init__(self, key: int | None, parent: _Node | None) -> None:
        self.key = key
        self.parent = parent
        self.children: dict[int, _Node] = {}
        self.tenants: dict[int, None] = {}


class TenantTree:
    """sgl-router's multi-tenant approximate radix tree (``policies/tree.rs``), over block
    keys instead of characters, one node per block (sgl-router compresses runs of characters
    into one node; a run's tenants are uniform, so matches are the same).

    Invariants: a tenant on a node is on all its ancestors; ``size[t]`` is the number of
    nodes holding tenant ``t``; after ``insert(.., t)``, ``size[t] <= max_blocks``.
    Eviction is per tenant, least recently used leaf first, as ``evict_tenant_by_size``; we
    run it after every insert instead of on a 30 s timer. Every access touches a tenant's
    whole root path, leaf first, so its least recently touched node is always a leaf for it.
    ``rank`` stands for the DashMap iteration order sgl-router takes its "first tenant" and
    its smallest-tenant ties from: arbitrary, but fixed."""

    def __init__(self, tenants: int, max_blocks: int, rank: Sequence[int]) -> None:
        self.root = _Node(None, None)
        self.root.tenants = dict.fromkeys(range(tenants))  # init_workers: insert("", url)
        self.size = [0] * tenants
        self.max_blocks = max_blocks
        self.rank = list(rank)
        self._order = sorted(range(tenants), key=self.rank.__getitem__)
        self._lru: list[OrderedDict[_Node, None]] = [OrderedDict() for _ in range(tenants)]

    def _touch(self, path: list[_Node], tenant: int) -> None:
        lru = self._lru[tenant]
        for node in reversed(path):
            lru[node] = None
            lru.move_to_end(node)

    def prefix_match(self, blocks: Sequence[int]) -> tuple[int, int]:
        """(blocks matched, the deepest matched node's first tenant); touches that tenant's
        path, as sgl-router does, whichever worker the request then goes to."""
        node = self.root
        path: list[_Node] = []
        for key in blocks:
            child = node.children.get(key)
            if child is None:
                break
            node = child
            path.append(node)
        tenant = min(node.tenants, key=self.rank.__getitem__)
        self._touch(path, tenant)
        return len(path), tenant

    def insert(self, blocks: Sequence[int], tenant: int) -> None:
        node = self.root
        path: list[_Node] = []
        for key in blocks:
            child = node.children.get(key)
            if child is None:
                child = node.children[key] = _Node(key, node)
            if tenant not in child.tenants:
                child.tenants[tenant] = None
                self.size[tenant] += 1
            node = child
            path.append(node)
        self._touch(path, tenant)
        self._evict(tenant)

    def _evict(self, tenant: int) -> None:
        lru = self._lru[tenant]
        while self.size[tenant] > self.max_blocks:
            node, _ = lru.popitem(last=False)
            del node.tenants[tenant]
            self.size[tenant] -= 1
            if not node.tenants and not node.children and node.parent is not None:
                del node.parent.children[node.key]

    def smallest_tenant(self) -> int:
        return min(self._order, key=self.size.__getitem__)


@dataclass(frozen=True)
class CacheAwareConfig:
    cache_threshold: float = 0.5
    balance_abs_threshold: int = 32
    balance_rel_threshold: float = 1.0001


class CacheAwarePolicy:
    """sgl-router's ``cache_aware`` (``policies/cache_aware.rs``), on blocks. Load is the
    number of outstanding requests. If ``max - min > balance_abs_threshold`` and
    ``max > min x balance_rel_threshold``: the least-loaded worker (the first such). Else the
    first tenant of the deepest tree match if its match rate (matched tokens / prompt tokens,
    where sgl-router counts characters) exceeds ``cache_threshold``, otherwise the tenant with
    the smallest tree. Either way the request is then inserted into the tree for the chosen
    worker, and the tree is evicted to the worker cache's capacity."""

    name = "cache_aware"

    def __init__(self, workers: int, max_blocks: int, config: CacheAwareConfig | None = None,
                 seed: int = 0) -> None:
        self.config = config or CacheAwareConfig()
        rank = list(range(workers))
        random.Random(seed).shuffle(rank)
        self.tree = TenantTree(workers, max_blocks, rank)

    def choose(self, request: Request, cluster: Cluster) -> int:
        cfg = self.config
        loads = cluster.outstanding
        high, low = max(loads), min(loads)
        if high - low > cfg.balance_abs_threshold and high > low * cfg.balance_rel_threshold:
            worker = loads.index(low)
        else:
            matched, tenant = self.tree.prefix_match(request.blocks)
            tokens = request.input_tokens
            rate = min(matched * cluster.block_size, tokens) / tokens if tokens else 0.0
            worker = tenant if rate > cfg.cache_threshold else self.tree.smallest_tenant()
        self.tree.insert(request.blocks, worker)
        return worker


POLICIES = ("prefix", "cache_aware", "round_robin", "least_load", "prefix_live")


def make_policy(name: str, config: SimConfig) -> Policy:
    if name == "prefix":
        return PrefixPolicy(config.load_bound)
    if name == "prefix_live":
        return LivePrefixPolicy(config.load_bound)
    if name == "cache_aware":
        return CacheAwarePolicy(config.workers, config.cache_blocks, seed=config.seed)
    if name == "round_robin":
        return RoundRobinPolicy()
    if name == "least_load":
        return LeastLoadPolicy()
    raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


# ------------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class SimResult:
    trace: str
    workers: int
    policy: str
    requests: int
    hit_rate: float
    max_mean_load: float
    mean_ttft_ms: float
    p99_ttft_ms: float
    seconds: float = field(default=0.0, compare=False)  # wall time the simulation took


def arrival_scale(trace: Trace, config: SimConfig) -> float:
    """The factor that makes the offered load ``utilization x workers`` token-times per
    token-time, counting every prompt token as uncached."""
    requests = trace.requests
    offered = sum(r.input_tokens + config.overhead_tokens for r in requests)
    span = requests[-1].arrival - requests[0].arrival if len(requests) > 1 else 0.0
    duration = offered / (config.utilization * config.workers)
    return duration / span if span > 0 else 0.0


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def simulate(trace: Trace, policy: str | Policy, config: SimConfig) -> SimResult:
    """Route every request of ``trace`` with ``policy`` and measure (see the module doc)."""
    started = time.perf_counter()
    chosen = make_policy(policy, config) if isinstance(policy, str) else policy
    cluster = Cluster(config, trace.block_size)
    scale = arrival_scale(trace, config)
    origin = trace.requests[0].arrival if trace.requests else 0.0
    hits = blocks = 0
    ttfts: list[float] = []
    for request in trace.requests:
        now = (request.arrival - origin) * scale
        cluster.advance(now)
        worker = chosen.choose(request, cluster)
        hit, finish = cluster.assign(request, worker)
        hits += hit
        blocks += len(request.blocks)
        ttfts.append(finish - now)
    ttfts.sort()
    ms = 1000.0 / config.tokens_per_s
    mean_work = sum(cluster.assigned) / cluster.size
    return SimResult(
        trace=trace.name, workers=config.workers, policy=chosen.name,
        requests=len(trace.requests),
        hit_rate=hits / blocks if blocks else 0.0,
        max_mean_load=max(cluster.assigned) / mean_work if mean_work else 0.0,
        mean_ttft_ms=sum(ttfts) / len(ttfts) * ms if ttfts else 0.0,
        p99_ttft_ms=_percentile(ttfts, 0.99) * ms,
        seconds=time.perf_counter() - started)


# ---------------------------------------------------------------------------------- the CLI


TRACES = ("system_prompts", "multiturn", "mooncake")


def load_trace(name: str, requests: int, seed: int, block_size: int,
               path: str | None = None) -> Trace:
    if name == "system_prompts":
        return system_prompts_trace(requests, seed=seed, block_size=block_size)
    if name == "multiturn":
        return multiturn_trace(requests, seed=seed, block_size=block_size)
    if name == "mooncake":
        if not path:
            raise ValueError("--trace mooncake needs --trace-file PATH (a JSONL trace)")
        return read_mooncake(path, limit=requests)
    raise ValueError(f"unknown trace {name!r}; choose from {', '.join(TRACES)}")


def format_table(results: Iterable[SimResult]) -> str:
    header = ("trace", "workers", "policy", "hit rate", "max/mean load", "mean TTFT ms",
              "p99 TTFT ms", "sim s")
    rows = [(r.trace, str(r.workers), r.policy, f"{r.hit_rate:.3f}", f"{r.max_mean_load:.3f}",
             f"{r.mean_ttft_ms:.1f}", f"{r.p99_ttft_ms:.1f}", f"{r.seconds:.1f}")
            for r in results]
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.simulate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--trace", choices=TRACES, default="system_prompts")
    parser.add_argument("--trace-file", help="a Mooncake-format JSONL file (--trace mooncake)")
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES[:4]))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block-size", type=int, default=16,
                        help="tokens per block for synthetic traces (Mooncake: 512)")
    defaults = SimConfig(workers=1)
    parser.add_argument("--cache-blocks", type=int, default=defaults.cache_blocks)
    parser.add_argument("--cache-kind", choices=("lru", "s3fifo"), default=defaults.cache_kind)
    parser.add_argument("--utilization", type=float, default=defaults.utilization)
    parser.add_argument("--overhead-tokens", type=int, default=defaults.overhead_tokens)
    parser.add_argument("--load-bound", type=float, default=defaults.load_bound)
    args = parser.parse_args(argv)
    try:
        trace = load_trace(args.trace, args.requests, args.seed, args.block_size,
                           args.trace_file)
    except (OSError, ValueError) as e:
        parser.error(str(e))
    if not trace.requests:
        parser.error("the trace has no requests")
    results = []
    for workers in args.workers:
        config = SimConfig(workers=workers, cache_blocks=args.cache_blocks,
                           cache_kind=args.cache_kind, utilization=args.utilization,
                           overhead_tokens=args.overhead_tokens, load_bound=args.load_bound,
                           seed=args.seed)
        for policy in args.policies:
            results.append(simulate(trace, policy, config))
    print(f"trace={trace.name} requests={len(trace.requests)} block_size={trace.block_size} "
          f"cache_blocks={args.cache_blocks} ({args.cache_kind}) "
          f"utilization={args.utilization} load_bound={args.load_bound}")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
