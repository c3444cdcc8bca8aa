"""Consumer half of the prfaas KV connector: receive a prompt's KV, verify it, install it.

Scheduler side (engine-core process): a request whose ``kv_transfer_params`` ask for remote
prefill reports the prompt's uncached tokens as externally available, loaded asynchronously;
after vLLM allocates blocks, the block ids and the first block to fill (the ones before it
are local prefix-cache hits, left untouched) go to the worker in the step's metadata.

Worker side (model process): a ``KVReceiver`` in this process stages incoming frames by
transfer id. Each step, ``get_transfer_results`` installs every complete transfer into its
request's blocks and reports it received; a transfer that failed (bad checksum, sender abort,
broken connection, staging budget) or did not complete within ``transfer_timeout_s`` is
reported as a failed receive, so vLLM recomputes the prompt locally and the request still
succeeds. Staged data of finished or aborted requests is discarded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorTransferResults,
)

from prfaas.connector_config import ConnectorConfig, transfer_secret
from prfaas.events import EventLog
from transfer.blocks import scatter_blocks
from transfer.frames import FrameHeader, FrameKind
from transfer.params import REMOTE_PREFILL, TransferParams
from transfer.receiver import KVReceiver
from transfer.staging import StagedTransfer, StagingStore, TransferState

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger("prfaas.decode.connector")


@dataclass
class LoadSpec:
    """Install transfer ``transfer_id`` into ``block_ids[first_block:]`` of request ``req_id``."""

    req_id: str
    transfer_id: str
    block_ids: list[int]
    first_block: int
    num_prompt_tokens: int


@dataclass
class ConsumerMetadata(KVConnectorMetadata):
    loads: list[LoadSpec] = field(default_factory=list)


@dataclass
class _PendingLoad:
    spec: LoadSpec
    deadline: float


class TransferInstallError(ValueError):
    """A complete transfer that does not fit the request (token count, coverage, shape)."""


class PrfaasConsumerConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        self.config = ConnectorConfig.from_extra_config(
            self._kv_transfer_config.kv_connector_extra_config)
        self.block_size = vllm_config.cache_config.block_size
        self.events = EventLog(self.config.event_log)
        # scheduler side
        self._to_load: dict[str, LoadSpec] = {}
        # worker side
        self._caches: list[torch.Tensor] = []
        self._pending: dict[str, _PendingLoad] = {}
        self.store = StagingStore(self.config.staging_budget_bytes, self.config.staging_ttl_s)
        self._receiver: KVReceiver | None = None
        if role is KVConnectorRole.WORKER:
            self._receiver = KVReceiver(
                self.config.transfer_host, self.config.transfer_port, transfer_secret(),
                self.store, on_frame=self._on_frame if self.events.enabled else None,
            )
            self._receiver.start()
            log.info("prfaas consumer: receiving KV on %s:%d", self.config.transfer_host,
                     self._receiver.port)
            self.events.emit("receiver_listening", port=self._receiver.port)

    # ---- scheduler side ----------------------------------------------------------------

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int
                                   ) -> tuple[int, bool]:
        params = request.kv_transfer_params
        if not params or not params.get(REMOTE_PREFILL) or TransferParams.from_dict(params) is None:
            return 0, False
        count = request.num_prompt_tokens - num_computed_tokens
        return (count, True) if count > 0 else (0, False)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        params = request.kv_transfer_params
        if not params or not params.get(REMOTE_PREFILL):
            return
        params[REMOTE_PREFILL] = False  # one transfer per request, even after a failure
        transfer = TransferParams.from_dict(params)
        if num_external_tokens <= 0 or transfer is None:
            return
        first_token = request.num_prompt_tokens - num_external_tokens
        self._to_load[request.request_id] = LoadSpec(
            request.request_id, transfer.transfer_id, list(blocks.get_block_ids()[0]),
            first_token // self.block_size, request.num_prompt_tokens,
        )

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> ConsumerMetadata:
        meta = ConsumerMetadata(loads=list(self._to_load.values()))
        self._to_load.clear()
        return meta

    def request_finished(self, request: Request, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        return False, None

    # ---- worker side -------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        self._caches = list(kv_caches.values())

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ConsumerMetadata)
        deadline = time.monotonic() + self.config.transfer_timeout_s
        for spec in meta.loads:
            self._pending[spec.req_id] = _PendingLoad(spec, deadline)
            self.events.emit("load_registered", req_id=spec.req_id,
                             transfer_id=spec.transfer_id, first_block=spec.first_block)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # loads finish between steps, before the request is scheduled

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        return

    def wait_for_save(self) -> None:
        return

    def get_transfer_results(self, finished_req_ids: set[str]) -> KVConnectorTransferResults:
        results = KVConnectorTransferResults()
        self.store.expire()
        now = time.monotonic()
        for req_id, pending in list(self._pending.items()):
            spec = pending.spec
            if req_id in finished_req_ids:  # aborted while waiting: free, release blocks
                self._drop(req_id)
                results.finished_recving.add(req_id)
                continue
            state, error = self.store.state(spec.transfer_id)
            if state is TransferState.COMPLETE:
                staged = self.store.take(spec.transfer_id)
                try:
                    assert staged is not None
                    tokens = self._install(spec, staged)
                except (TransferInstallError, ValueError, AssertionError) as exc:
                    self._fail(results, req_id, f"install failed: {exc}")
                    continue
                finally:
                    if staged is not None:
                        self.store.recycle(staged)
                del self._pending[req_id]
                results.finished_recving.add(req_id)
                self.events.emit("kv_loaded", req_id=req_id, transfer_id=spec.transfer_id,
                                 tokens=tokens, first_block=spec.first_block,
                                 staged_bytes=self.store.staged_bytes)
            elif state is TransferState.FAILED:
                self._fail(results, req_id, error or "transfer failed")
            elif now > pending.deadline:
                self._fail(results, req_id, f"no complete transfer within "
                                            f"{self.config.transfer_timeout_s:.1f}s")
        return results

    def get_finished(self, finished_req_ids: set[str]) -> tuple[None, set[str] | None]:
        results = self.get_transfer_results(finished_req_ids)
        return None, results.finished_recving or None

    def _drop(self, req_id: str) -> None:
        pending = self._pending.pop(req_id)
        self.store.discard(pending.spec.transfer_id)

    def _fail(self, results: KVConnectorTransferResults, req_id: str, reason: str) -> None:
        transfer_id = self._pending[req_id].spec.transfer_id
        self._drop(req_id)
        results.failed_recving.add(req_id)
        results.finished_recving.add(req_id)
        log.warning("prfaas: KV load for %s failed (%s); recomputing locally", req_id, reason)
        self.events.emit("kv_load_failed", req_id=req_id, transfer_id=transfer_id,
                         reason=reason, staged_bytes=self.store.staged_bytes)

    def _install(self, spec: LoadSpec, staged: StagedTransfer) -> int:
        """Copy staged frames into the request's blocks; returns the tokens installed."""
        sent_tokens = int(staged.info.get("num_tokens", -1))
        if sent_tokens != spec.num_prompt_tokens:
            raise TransferInstallError(
                f"transfer holds {sent_tokens} tokens, the prompt has {spec.num_prompt_tokens}")
        end_block = -(-spec.num_prompt_tokens // self.block_size)
        if end_block > len(spec.block_ids):
            raise TransferInstallError("fewer blocks allocated than the prompt needs")
        wanted = end_block - spec.first_block
        covered: list[set[int]] = [set() for _ in self._caches]
        # Ascending block order: a partly filled block re-sent whole by a later chunk wins.
        for frame in sorted(staged.frames, key=lambda f: (f.layer, f.block_start)):
            if frame.layer >= len(self._caches):
                raise TransferInstallError(f"frame for layer {frame.layer} of "
                                           f"{len(self._caches)}")
            lo = max(frame.block_start, spec.first_block)
            hi = min(frame.block_start + frame.num_blocks, end_block)
            if lo >= hi:
                continue
            source = frame.tensor[lo - frame.block_start: hi - frame.block_start]
            scatter_blocks(self._caches[frame.layer], spec.block_ids[lo:hi], source)
            covered[frame.layer].update(range(lo, hi))
        if any(len(blocks) != wanted for blocks in covered):
            raise TransferInstallError("transfer does not cover every layer's blocks")
        return spec.num_prompt_tokens - spec.first_block * self.block_size

    def _on_frame(self, header: FrameHeader, received_at: float) -> None:
        if header.kind is FrameKind.DATA:
            self.events.emit("frame_received", transfer_id=header.transfer_id,
                             layer=header.layer, block_start=header.block_start,
                             num_blocks=header.num_blocks, wire_bytes=header.payload_len,
                             raw_bytes=header.raw_len, received_at=received_at)

    def shutdown(self) -> None:
        if self._receiver is not None:
            self._receiver.stop()
