"""The routing decision for one request, explainable in one line.

decode  = the healthy decode worker with the fewest in-flight requests, then tokens;
prefill = remote iff uncached_tokens >= remote_prefill_threshold and a prefill worker is
          healthy, on the rendezvous choice for the prompt's leading block hash, bounded to
          ``load_bound`` x the mean prefill load;
otherwise the decode worker prefills locally and no KV moves.

``uncached_tokens`` is the prompt minus what the chosen decode worker is known to hold; until
the KV-event prefix index exists it is the whole prompt.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from router.block_hash import block_hashes
from router.rendezvous import choose_bounded
from router.workers import DecodeWorker, Pools, PrefillWorker

log = logging.getLogger("prfaas.router")


class NoHealthyWorker(RuntimeError):
    """A pool has no worker that can take the request now."""


@dataclass(frozen=True)
class RouterConfig:
    block_size: int = 128
    remote_prefill_threshold: int = 256
    load_bound: float = 1.25
    prefix_key_blocks: int = 4


@dataclass(frozen=True)
class RouteDecision:
    decode: DecodeWorker
    prefill: PrefillWorker | None
    prompt_tokens: int
    uncached_tokens: int
    prefix_key: str

    @property
    def remote(self) -> bool:
        return self.prefill is not None

    def explain(self) -> str:
        where = f"remote prefill on {self.prefill.name}" if self.prefill else "local prefill"
        return (f"{where}, decode on {self.decode.name}: prompt={self.prompt_tokens} "
                f"uncached={self.uncached_tokens} key={self.prefix_key[:12]}")


class Router:
    def __init__(self, pools: Pools, config: RouterConfig) -> None:
        if not pools.decode:
            raise ValueError("the router needs at least one decode worker")
        self.pools = pools
        self.config = config

    def prefix_key(self, token_ids: list[int]) -> bytes:
        """The hash of the prompt's leading ``prefix_key_blocks`` full blocks (vLLM's own
        chained block hash), or of all its tokens when it has no full block."""
        leading = token_ids[: self.config.prefix_key_blocks * self.config.block_size]
        hashes = block_hashes(leading, self.config.block_size)
        if hashes:
            return hashes[-1]
        return hashlib.sha256(repr(tuple(token_ids)).encode()).digest()

    def choose_decode(self, exclude: set[str] = frozenset()) -> DecodeWorker:
        healthy = [w for w in self.pools.decode if w.healthy() and w.name not in exclude]
        if not healthy:
            raise NoHealthyWorker("no healthy decode worker")
        return min(healthy, key=lambda w: (w.in_flight, w.in_flight_tokens))

    def choose_prefill(self, key: bytes) -> PrefillWorker | None:
        healthy = {w.name: w for w in self.pools.prefill if w.healthy()}
        if not healthy:
            return None
        name = choose_bounded(key, {n: w.in_flight for n, w in healthy.items()},
                              self.config.load_bound)
        return healthy[name]

    def route(self, token_ids: list[int], exclude_decode: set[str] = frozenset()
              ) -> RouteDecision:
        decode = self.choose_decode(exclude_decode)
        key = self.prefix_key(token_ids)
        uncached = len(token_ids)
        prefill = None
        if uncached >= self.config.remote_prefill_threshold:
            prefill = self.choose_prefill(key)
        decision = RouteDecision(decode, prefill, len(token_ids), uncached, key.hex())
        log.info("route: %s", decision.explain())
        return decision
