"""Launch a decode worker: vLLM with the consumer connector and its KV receiver port."""

from __future__ import annotations

from pathlib import Path

from prfaas.connector_config import ConnectorConfig
from prfaas.settings import WorkerSettings
from prfaas.vllm_server import ServerProcess, kv_transfer_config, start_server


def connector_config(settings: WorkerSettings) -> ConnectorConfig:
    return ConnectorConfig(transfer_host=settings.transfer_host,
                           transfer_port=settings.transfer_port,
                           transfer_timeout_s=settings.transfer_timeout_s,
                           event_log=settings.event_log)


def start_decode(settings: WorkerSettings, name: str = "decode",
                 log_path: Path | None = None) -> ServerProcess:
    config = kv_transfer_config("decode", connector_config(settings))
    return start_server(name, settings, config, log_path)
