"""Launch a prefill worker: vLLM with the producer connector."""

from __future__ import annotations

from pathlib import Path

from prfaas.connector_config import ConnectorConfig
from prfaas.settings import WorkerSettings
from prfaas.vllm_server import ServerProcess, kv_transfer_config, start_server


def connector_config(settings: WorkerSettings) -> ConnectorConfig:
    return ConnectorConfig(codec=settings.codec,
                           connections_per_peer=settings.connections_per_peer,
                           transfer_timeout_s=settings.transfer_timeout_s,
                           event_log=settings.event_log, link_gbps=settings.link_gbps,
                           link_latency_ms=settings.link_latency_ms,
                           host_tier_bytes=int(settings.host_tier_gb * (1 << 30)))


def start_prefill(settings: WorkerSettings, name: str = "prefill",
                  log_path: Path | None = None) -> ServerProcess:
    config = kv_transfer_config("prefill", connector_config(settings))
    return start_server(name, settings, config, log_path)
