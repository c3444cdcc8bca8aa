"""Host-memory prefix tier of the prefill worker: full KV blocks kept in RAM by block hash.

vLLM's own prefix cache lives in the (small) KV cache and forgets a system prompt as soon as
enough other prompts pass through. This tier keeps every full prompt block the worker
produced — all layers of it, keyed by vLLM's block hash — in a byte-budgeted S3-FIFO cache,
so a burst of one-off long prompts does not flush the hot system prompts. On a later request
whose next blocks are in the tier, the connector reports them as externally computed and
copies them into the blocks vLLM allocated before the forward pass (a synchronous load).

Two halves, as in the connector:
- ``TierDirectory`` (scheduler process) knows which hashes the tier holds, from the
  ``TierDelta`` the worker reports after every step, and answers "how many of this request's
  next blocks can be loaded".
- ``HostTier`` (worker process) holds the data: ``collect`` gathers this step's finished
  blocks layer by layer, ``commit`` stores them, ``load`` installs hits.
Invariant: the directory lags the tier by at most one step, and only by entries added (loads
are planned before the step's stores can evict); a block evicted in between is reported as
a load error and vLLM recomputes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorWorkerMetadata

from prefill_worker.eviction import S3FifoCache
from transfer.blocks import gather_blocks


@dataclass
class TierDelta(KVConnectorWorkerMetadata):
    """Hashes the tier gained and lost in one step (worker -> scheduler)."""

    stored: list[bytes] = field(default_factory=list)
    evicted: list[bytes] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, TierDelta)
        return TierDelta(self.stored + other.stored, self.evicted + other.evicted)


@dataclass
class BlockRun:
    """Blocks of one request: vLLM block ids and their block hashes, in prompt order."""

    req_id: str
    block_ids: list[int]
    hashes: list[bytes]


class TierDirectory:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.keys: set[bytes] = set()

    def apply(self, delta: TierDelta) -> None:
        self.keys.update(delta.stored)
        self.keys.difference_update(delta.evicted)

    def loadable_blocks(self, hashes: list[bytes], num_computed_tokens: int,
                        num_prompt_tokens: int) -> int:
        """Consecutive blocks after the computed ones that the tier holds, leaving at least
        the prompt's last token for vLLM to compute."""
        start = num_computed_tokens // self.block_size
        limit = (num_prompt_tokens - 1) // self.block_size
        count = 0
        while start + count < min(limit, len(hashes)) and hashes[start + count] in self.keys:
            count += 1
        return count


class HostTier:
    def __init__(self, capacity_bytes: int) -> None:
        self.cache = S3FifoCache(capacity_bytes)
        self._collected: dict[int, list[torch.Tensor]] = {}  # layer -> per-run gathers
        self._delta = TierDelta()

    def load(self, caches: list[torch.Tensor], run: BlockRun) -> set[int]:
        """Copy the run's blocks into the KV caches; returns block ids it could not load."""
        failed: set[int] = set()
        for block_id, block_hash in zip(run.block_ids, run.hashes, strict=True):
            entry = self.cache.get(block_hash)
            if entry is None:
                failed.add(block_id)
                continue
            for layer, cache in enumerate(caches):
                cache[block_id].copy_(entry[layer])
        return failed

    def collect(self, layer: int, kv_layer: torch.Tensor, runs: list[BlockRun]) -> None:
        """Gather this layer's copy of every block finished in this step."""
        block_ids = [b for run in runs for b in run.block_ids]
        if block_ids:
            self._collected.setdefault(layer, []).append(gather_blocks(kv_layer, block_ids))

    def commit(self, runs: list[BlockRun]) -> None:
        """Store the blocks collected over all layers in this step."""
        if not self._collected:
            return
        layers = [torch.cat(self._collected[layer]) for layer in sorted(self._collected)]
        self._collected.clear()
        stacked = torch.stack(layers)  # [layers, blocks, heads, block_size, width]
        hashes = [h for run in runs for h in run.hashes]
        for index, block_hash in enumerate(hashes):
            if block_hash in self.cache:
                continue
            entry = stacked[:, index].clone()
            evicted = self.cache.put(block_hash, entry, entry.numel() * entry.element_size())
            if block_hash in self.cache:
                self._delta.stored.append(block_hash)
            self._delta.evicted.extend(k for k in evicted if isinstance(k, bytes))

    def take_delta(self) -> TierDelta | None:
        delta, self._delta = self._delta, TierDelta()
        return delta if delta.stored or delta.evicted else None
