"""Prefill connector counters on the worker's Prometheus ``/metrics``.

vLLM carries a connector's ``KVConnectorStats`` from the model process to the API server each
step and hands its ``data`` to the connector's ``KVConnectorPromMetrics``; these two classes
are ours. Counters (per engine label):

- ``prfaas:host_tier_hit_blocks_total``: blocks loaded from the host tier into vLLM's cache;
- ``prfaas:host_tier_lost_blocks_total``: planned host-tier loads whose block was evicted in
  between (vLLM recomputed them);
- ``prfaas:host_tier_stored_blocks_total`` / ``prfaas:host_tier_evicted_blocks_total``;
- ``prfaas:kv_raw_bytes_total`` / ``prfaas:kv_wire_bytes_total``: KV bytes before and after
  the codec (frame headers included), and ``prfaas:kv_transfers_total``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.metrics import (
    KVConnectorPromMetrics,
    KVConnectorStats,
)
from vllm.v1.metrics.utils import create_metric_per_engine

COUNTERS = {
    "host_tier_hit_blocks": "Blocks loaded from the prefill host-memory tier",
    "host_tier_lost_blocks": "Planned host-tier loads whose block was evicted first",
    "host_tier_stored_blocks": "Blocks stored in the prefill host-memory tier",
    "host_tier_evicted_blocks": "Blocks evicted from the prefill host-memory tier",
    "kv_raw_bytes": "KV bytes sent to decode workers, before the codec",
    "kv_wire_bytes": "KV bytes sent to decode workers on the wire",
    "kv_transfers": "KV transfers to decode workers",
}


def _zeros() -> dict[str, int]:
    return dict.fromkeys(COUNTERS, 0)


@dataclass
class ProducerStats(KVConnectorStats):
    data: dict[str, Any] = field(default_factory=_zeros)

    def add(self, name: str, amount: int) -> None:
        self.data[name] = self.data.get(name, 0) + amount

    def reset(self) -> None:
        self.data = _zeros()

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        for name, value in other.data.items():
            self.add(name, value)
        return self

    def reduce(self) -> dict[str, int | float]:
        return dict(self.data)

    def is_empty(self) -> bool:
        return not any(self.data.values())


class ProducerPromMetrics(KVConnectorPromMetrics):
    def __init__(self, vllm_config: Any, metric_types: dict, labelnames: list[str],
                 per_engine_labelvalues: dict[int, list[object]]) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self.counters = {
            name: create_metric_per_engine(
                self._counter_cls(name=f"prfaas:{name}", documentation=doc,
                                  labelnames=labelnames),
                per_engine_labelvalues)
            for name, doc in COUNTERS.items()
        }

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name, value in transfer_stats_data.items():
            if name in self.counters and value:
                self.counters[name][engine_idx].inc(value)
