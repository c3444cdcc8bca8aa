"""The routing decision for one request, explainable in one line.

decode  = among healthy decode workers under the load bound, the one holding the longest
          prefix of the prompt (KV-event index), then the least loaded;
prefill = remote iff the prompt's tokens not already on that decode worker reach
          ``remote_prefill_threshold`` and a prefill worker is healthy; policy ``prefix``
          picks the prefill worker with the longest matched prefix under the load bound
          (no worker above ``load_bound`` x the mean load, counting this request), and
          when no worker matches, rendezvous hashing on the leading block hash; policies
          ``round_robin`` and ``least_load`` are there for comparison;
otherwise the decode worker prefills locally and no KV moves. With remote prefill, only
blocks after the ``decode_cached_blocks`` the decode worker already holds are sent.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from router.block_hash import block_hashes, event_key
from router.prefix_index import PrefixIndex
from router.rendezvous import choose_bounded
from router.workers import DecodeWorker, Pools, PrefillWorker, Worker

log = logging.getLogger("prfaas.router")

POLICIES = ("prefix", "round_robin", "least_load")
W = TypeVar("W", bound=Worker)


class NoHealthyWorker(RuntimeError):
    """A pool has no worker that can take the request now."""


@dataclass(frozen=True)
class RouterConfig:
    block_size: int = 128
    remote_prefill_threshold: int = 256
    load_bound: float = 1.25
    prefix_key_blocks: int = 4
    policy: str = "prefix"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"routing policy {self.policy!r} is not one of {POLICIES}")


@dataclass(frozen=True)
class RouteDecision:
    decode: DecodeWorker
    prefill: PrefillWorker | None
    prompt_tokens: int
    uncached_tokens: int
    decode_cached_blocks: int
    prefill_matched_blocks: int
    prefix_key: str

    @property
    def remote(self) -> bool:
        return self.prefill is not None

    def explain(self) -> str:
        where = (f"remote prefill on {self.prefill.name} (matched "
                 f"{self.prefill_matched_blocks} blocks)" if self.prefill else "local prefill")
        return (f"{where}, decode on {self.decode.name} (holds {self.decode_cached_blocks} "
                f"blocks): prompt={self.prompt_tokens} uncached={self.uncached_tokens} "
                f"key={self.prefix_key[:12]}")


def _under_load_bound(workers: Sequence[W], bound: float) -> list[W]:
    capacity = math.ceil(bound * (sum(w.in_flight for w in workers) + 1) / len(workers))
    return [w for w in workers if w.in_flight < capacity] or list(workers)


class Router:
    def __init__(self, pools: Pools, config: RouterConfig,
                 index: PrefixIndex | None = None) -> None:
        if not pools.decode:
            raise ValueError("the router needs at least one decode worker")
        self.pools = pools
        self.config = config
        self.index = index or PrefixIndex()
        self._round_robin = itertools.count()

    def prefix_key(self, token_ids: list[int], hashes: list[bytes]) -> bytes:
        """The hash of the prompt's leading ``prefix_key_blocks`` full blocks (vLLM's own
        chained block hash), or of all its tokens when it has no full block."""
        if hashes:
            return hashes[min(self.config.prefix_key_blocks, len(hashes)) - 1]
        return hashlib.sha256(repr(tuple(token_ids)).encode()).digest()

    def _cache_aware(self, workers: Sequence[W], keys: Sequence[int]) -> tuple[W, int]:
        """Longest matched prefix under the load bound, then least loaded."""
        candidates = _under_load_bound(workers, self.config.load_bound)
        scored = [(self.index.match(w.name, keys), w) for w in candidates]
        matched, best = max(scored, key=lambda mw: (mw[0], -mw[1].in_flight,
                                                    -mw[1].in_flight_tokens))
        return best, matched

    def choose_decode(self, keys: Sequence[int] = (),
                      exclude: frozenset[str] | set[str] = frozenset()
                      ) -> tuple[DecodeWorker, int]:
        healthy = [w for w in self.pools.decode if w.healthy() and w.name not in exclude]
        if not healthy:
            raise NoHealthyWorker("no healthy decode worker")
        return self._cache_aware(healthy, keys)

    def choose_prefill(self, keys: list[int], key: bytes) -> tuple[PrefillWorker | None, int]:
        healthy = [w for w in self.pools.prefill if w.healthy()]
        if not healthy:
            return None, 0
        if self.config.policy == "round_robin":
            worker = healthy[next(self._round_robin) % len(healthy)]
        elif self.config.policy == "least_load":
            worker = min(healthy, key=lambda w: (w.in_flight, w.in_flight_tokens))
        else:
            best, matched = self._cache_aware(healthy, keys)
            if matched:
                return best, matched
            by_name = {w.name: w for w in healthy}
            name = choose_bounded(key, {n: w.in_flight for n, w in by_name.items()},
                                  self.config.load_bound)
            worker = by_name[name]
        return worker, self.index.match(worker.name, keys)

    def route(self, token_ids: list[int]) -> RouteDecision:
        hashes = block_hashes(token_ids, self.config.block_size)
        keys = [event_key(h) for h in hashes]
        key = self.prefix_key(token_ids, hashes)
        decode, decode_blocks = self.choose_decode(keys)
        uncached = len(token_ids) - decode_blocks * self.config.block_size
        prefill, prefill_blocks = None, 0
        if uncached >= self.config.remote_prefill_threshold:
            prefill, prefill_blocks = self.choose_prefill(keys, key)
        if prefill is not None:
            self.index.note_routed(prefill.name, keys)
        self.index.note_routed(decode.name, keys)
        decision = RouteDecision(decode, prefill, len(token_ids), uncached, decode_blocks,
                                 prefill_blocks, key.hex())
        log.info("route: %s", decision.explain())
        return decision
