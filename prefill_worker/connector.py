"""Producer half of the prfaas KV connector: stream a request's KV, layer by layer, to decode.

Scheduler side (engine-core process): a request whose ``kv_transfer_params`` name a transfer id
and a decode transfer address is tracked while it prefills (from ``prfaas_first_block`` on:
blocks the decode worker already holds are not sent); each step's metadata tells the
worker which token range of which blocks became final in that step (chunked prefill sends a
prompt over several steps; blocks from vLLM's own prefix cache go out with the first chunk).
``request_finished`` holds the request's blocks until the worker reports the transfer done.

Worker side (model process): ``save_kv_layer`` copies the request's blocks of the layer just
computed and queues them on the ``KVSender`` without waiting, so layer l is on the wire while
layer l+1 computes; ``wait_for_save`` closes each transfer whose last chunk ran this step.

Host tier (``host_tier_bytes`` > 0): every full prompt block the worker finishes is also kept
in RAM (``prefill_worker.host_tier``); blocks vLLM's own cache has lost but the tier holds are
reported as external hits and installed in ``start_load_kv`` before the forward pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from prefill_worker.host_tier import BlockRun, HostTier, TierDelta, TierDirectory
from prefill_worker.metrics import ProducerPromMetrics, ProducerStats
from prfaas.connector_config import ConnectorConfig, transfer_secret
from prfaas.events import EventLog
from transfer.blocks import gather_blocks
from transfer.params import NUM_TOKENS, TransferParams
from transfer.sender import KVSender, parse_address
from transfer.shaping import LinkShaper

if TYPE_CHECKING:
    from concurrent.futures import Future

    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

log = logging.getLogger("prfaas.prefill.connector")


@dataclass
class ChunkToSend:
    """Blocks ``[first_block, end_block)`` of a request become final in this step."""

    req_id: str
    transfer_id: str
    decode_address: str
    block_ids: list[int]  # the request's block ids for blocks first_block..end_block-1
    first_block: int
    end_block: int
    num_prompt_tokens: int
    is_last: bool


@dataclass
class ProducerMetadata(KVConnectorMetadata):
    chunks: list[ChunkToSend] = field(default_factory=list)
    host_loads: list[BlockRun] = field(default_factory=list)  # tier hits to install first
    host_stores: list[BlockRun] = field(default_factory=list)  # blocks finished this step


@dataclass
class _Prefilling:
    """Scheduler-side record of one request streaming its KV."""

    params: TransferParams
    num_prompt_tokens: int
    sent_tokens: int = 0  # KV of tokens [0, sent_tokens) is already queued


@dataclass
class _Tracked:
    """Scheduler-side record of a running request: its vLLM block ids so far."""

    request: Request
    block_ids: list[int] = field(default_factory=list)


def _scheduled_requests(scheduler_output: SchedulerOutput
                        ) -> Iterator[tuple[str, list[int] | None, bool, int, int]]:
    """Per scheduled request: (id, new block ids or None, whether they replace the old ones
    (new or resumed request), tokens computed before this step, tokens scheduled in it)."""
    scheduled = scheduler_output.num_scheduled_tokens
    for new_req in scheduler_output.scheduled_new_reqs:
        yield (new_req.req_id, list(new_req.block_ids[0]), True, new_req.num_computed_tokens,
               scheduled[new_req.req_id])
    cached = scheduler_output.scheduled_cached_reqs
    for i, req_id in enumerate(cached.req_ids):
        new_blocks = cached.new_block_ids[i]
        yield (req_id, list(new_blocks[0]) if new_blocks is not None else None,
               req_id in cached.resumed_req_ids, cached.num_computed_tokens[i],
               scheduled.get(req_id, 0))


class PrfaasProducerConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra_config(
            self._kv_transfer_config.kv_connector_extra_config)
        self.block_size = vllm_config.cache_config.block_size
        self.events = EventLog(self.config.event_log)
        # scheduler side
        self._prefilling: dict[str, _Prefilling] = {}
        self._streaming_started: set[str] = set()
        self._directory = (TierDirectory(self.block_size)
                           if self.config.host_tier_bytes > 0 else None)
        self._tracked: dict[str, _Tracked] = {}
        self._planned_hits: dict[str, tuple[int, int]] = {}  # req -> (first block, count)
        self._host_loads: list[BlockRun] = []
        # worker side
        self._sender: KVSender | None = None
        self._layer_index: dict[str, int] = {}
        self._open: dict[str, str] = {}  # req_id -> transfer id still receiving layers
        # req_id -> (transfer id, its END/ABORT send in flight)
        self._closing: dict[str, tuple[str, Future]] = {}
        self._forward_done: dict[str, float] = {}  # transfer id -> when its last chunk ran
        self._finished_seen: set[str] = set()
        self._caches: list[torch.Tensor] = []
        self._tier: HostTier | None = None
        self._load_errors: set[int] = set()
        self._stats = ProducerStats()
        if role is KVConnectorRole.WORKER and self.config.host_tier_bytes > 0:
            self._tier = HostTier(self.config.host_tier_bytes)
        if role is KVConnectorRole.WORKER:
            shaper = None
            if self.config.link_gbps > 0 or self.config.link_latency_ms > 0:
                shaper = LinkShaper(self.config.link_gbps, self.config.link_latency_ms)
            self._sender = KVSender(
                transfer_secret(), codec=self.config.codec,
                connections_per_peer=self.config.connections_per_peer,
                io_timeout_s=self.config.transfer_timeout_s, shaper=shaper,
            )

    # ---- scheduler side ----------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int
                                   ) -> tuple[int, bool]:
        """Blocks after vLLM's own hits that the host tier holds, loaded synchronously."""
        if self._directory is None:
            return 0, False
        count = self._directory.loadable_blocks(request.block_hashes, num_computed_tokens,
                                                request.num_prompt_tokens)
        self._planned_hits[request.request_id] = (num_computed_tokens // self.block_size, count)
        return count * self.block_size, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        planned = self._planned_hits.pop(request.request_id, None)
        self._tracked.setdefault(request.request_id, _Tracked(request))
        if self._directory is not None:
            if num_external_tokens > 0 and planned is not None:
                start, count = planned
                block_ids = list(blocks.get_block_ids()[0][start:start + count])
                self._host_loads.append(BlockRun(request.request_id, block_ids,
                                                 list(request.block_hashes[start:start + count])))
        params = TransferParams.from_dict(request.kv_transfer_params)
        if params is None or request.request_id in self._prefilling:
            return
        # Blocks the decode worker already holds are not sent (always send the last block,
        # whose KV completes the prompt).
        last_block = (request.num_prompt_tokens - 1) // self.block_size
        first_token = min(params.first_block, last_block) * self.block_size
        self._prefilling[request.request_id] = _Prefilling(
            params, request.num_prompt_tokens, sent_tokens=first_token)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> ProducerMetadata:
        meta = ProducerMetadata(host_loads=self._host_loads)
        self._host_loads = []
        for req_id, new_ids, replace, before, count in _scheduled_requests(scheduler_output):
            tracked = self._tracked.get(req_id)
            if tracked is None:
                continue
            if new_ids is not None:
                tracked.block_ids = new_ids if replace else tracked.block_ids + new_ids
            if self._directory is not None:
                self._plan_host_store(meta, tracked, before, before + count)
            state = self._prefilling.get(req_id)
            if state is not None:
                self._add_chunk(meta, req_id, state, tracked.block_ids, before + count)
        return meta

    def _plan_host_store(self, meta: ProducerMetadata, tracked: _Tracked, computed_before: int,
                         computed_after: int) -> None:
        """Queue the prompt blocks this step completes that the host tier lacks."""
        assert self._directory is not None
        request = tracked.request
        first = computed_before // self.block_size
        end = min(computed_after, request.num_prompt_tokens) // self.block_size
        end = min(end, len(request.block_hashes), len(tracked.block_ids))
        picks = [i for i in range(first, end)
                 if request.block_hashes[i] not in self._directory.keys]
        if picks:
            meta.host_stores.append(BlockRun(
                request.request_id, [tracked.block_ids[i] for i in picks],
                [request.block_hashes[i] for i in picks]))

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        delta = connector_output.kv_connector_worker_meta
        if self._directory is not None and isinstance(delta, TierDelta):
            self._directory.apply(delta)

    def _add_chunk(self, meta: ProducerMetadata, req_id: str, state: _Prefilling,
                   block_ids: list[int], computed_after_step: int) -> None:
        end_tokens = min(computed_after_step, state.num_prompt_tokens)
        if end_tokens <= state.sent_tokens:
            return
        first_block = state.sent_tokens // self.block_size
        end_block = -(-end_tokens // self.block_size)
        is_last = end_tokens >= state.num_prompt_tokens
        meta.chunks.append(ChunkToSend(
            req_id, state.params.transfer_id, state.params.decode_address,
            block_ids[first_block:end_block], first_block, end_block,
            state.num_prompt_tokens, is_last,
        ))
        self._streaming_started.add(req_id)
        # A partly filled last block is sent again, whole, with the next chunk.
        full_blocks_end = end_tokens // self.block_size * self.block_size
        state.sent_tokens = end_tokens if is_last else full_blocks_end
        if is_last:
            del self._prefilling[req_id]

    def request_finished(self, request: Request, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        req_id = request.request_id
        self._prefilling.pop(req_id, None)
        self._tracked.pop(req_id, None)
        self._planned_hits.pop(req_id, None)
        params = TransferParams.from_dict(request.kv_transfer_params)
        if params is None:
            return False, None
        started = req_id in self._streaming_started
        self._streaming_started.discard(req_id)
        out = params.for_decode()
        out[NUM_TOKENS] = request.num_prompt_tokens
        # Hold the blocks until the worker has closed (or aborted) the transfer.
        return started, out

    # ---- worker side -------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._layer_index = {name: i for i, name in enumerate(kv_caches)}
        self._caches = list(kv_caches.values())
        first = next(iter(kv_caches.values()))
        log.info("prfaas producer: %d KV layers, layer cache shape %s %s",
                 len(kv_caches), tuple(first.shape), first.dtype)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        """Install host-tier hits into their blocks before the forward pass reads them."""
        meta = self._get_connector_metadata()
        assert isinstance(meta, ProducerMetadata)
        if self._tier is None or not meta.host_loads:
            return
        for run in meta.host_loads:
            failed = self._tier.load(self._caches, run)
            self._load_errors |= failed
            self._stats.add("host_tier_hit_blocks", len(run.block_ids) - len(failed))
            self._stats.add("host_tier_lost_blocks", len(failed))
            self.events.emit("host_tier_load", req_id=run.req_id, blocks=len(run.block_ids),
                             failed=len(failed))

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def build_connector_worker_meta(self) -> TierDelta | None:
        if self._tier is None:
            return None
        delta = self._tier.take_delta()
        if delta is not None:
            self._stats.add("host_tier_stored_blocks", len(delta.stored))
            self._stats.add("host_tier_evicted_blocks", len(delta.evicted))
        return delta

    def get_kv_connector_stats(self) -> ProducerStats | None:
        if self._stats.is_empty():
            return None
        stats, self._stats = self._stats, ProducerStats()
        return stats

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> ProducerStats:
        return ProducerStats(data=data) if data is not None else ProducerStats()

    @classmethod
    def build_prom_metrics(cls, vllm_config: VllmConfig, metric_types: dict,
                           labelnames: list[str],
                           per_engine_labelvalues: dict[int, list[object]]
                           ) -> ProducerPromMetrics:
        return ProducerPromMetrics(vllm_config, metric_types, labelnames,
                                   per_engine_labelvalues)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ProducerMetadata) and self._sender is not None
        layer = self._layer_index[layer_name]
        if self._tier is not None and meta.host_stores:
            self._tier.collect(layer, kv_layer, meta.host_stores)
        for chunk in meta.chunks:
            if not chunk.block_ids:
                continue
            self._open[chunk.req_id] = chunk.transfer_id
            blocks = gather_blocks(kv_layer, chunk.block_ids)
            self._sender.send_layer(parse_address(chunk.decode_address), chunk.transfer_id,
                                    layer, chunk.first_block, blocks)
            if layer == 0 and self.events.enabled:
                self.events.emit("layer_queued", transfer_id=chunk.transfer_id, layer=layer,
                                 first_block=chunk.first_block, end_block=chunk.end_block)

    def wait_for_save(self) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        assert isinstance(meta, ProducerMetadata) and self._sender is not None
        if self._tier is not None and meta.host_stores:
            self._tier.commit(meta.host_stores)
        for chunk in meta.chunks:
            self.events.emit("chunk_forward_done", transfer_id=chunk.transfer_id,
                             first_block=chunk.first_block, end_block=chunk.end_block,
                             is_last=chunk.is_last)
            if chunk.is_last:
                self._open.pop(chunk.req_id, None)
                self._forward_done[chunk.transfer_id] = time.time()
                self._closing[chunk.req_id] = (chunk.transfer_id, self._sender.finish(
                    chunk.transfer_id, {"num_tokens": chunk.num_prompt_tokens}))

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, None]:
        assert self._sender is not None
        self._finished_seen |= finished_req_ids & (set(self._open) | set(self._closing))
        for req_id in finished_req_ids & set(self._open):
            # Finished (aborted) before its last chunk ran: tell decode to stop waiting.
            transfer_id = self._open.pop(req_id)
            self._closing[req_id] = (transfer_id, self._sender.abort(
                transfer_id, "request aborted on prefill"))
        done = {r for r in self._finished_seen & set(self._closing) if self._closing[r][1].done()}
        for req_id in done:
            transfer_id, closed = self._closing.pop(req_id)
            closed.result()
            self._report(req_id, transfer_id)
        self._finished_seen -= done
        return (done or None), None

    def _report(self, req_id: str, transfer_id: str) -> None:
        """Log what the transfer cost: bytes raw and on the wire, and how much of the time
        spent writing overlapped the forward pass."""
        assert self._sender is not None
        report = self._sender.reports.pop(transfer_id, None)
        forward_done = self._forward_done.pop(transfer_id, None)
        if report is None:
            return
        self._stats.add("kv_transfers", 1)
        self._stats.add("kv_raw_bytes", report.raw_bytes)
        self._stats.add("kv_wire_bytes", report.wire_bytes)
        self.events.emit(
            "transfer_sent", req_id=req_id, transfer_id=transfer_id, ok=report.ok,
            codec=self.config.codec, frames=report.frames, raw_bytes=report.raw_bytes,
            wire_bytes=report.wire_bytes, ratio=round(report.ratio, 4),
            transfer_s=round(report.seconds, 6),
            overlap=round(report.overlap(forward_done), 4) if forward_done else None)

    def shutdown(self) -> None:
        if self._sender is not None:
            self._sender.close()
