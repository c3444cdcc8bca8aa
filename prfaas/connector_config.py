"""Settings the KV connectors read inside vLLM's engine processes.

They arrive through ``kv_transfer_config.kv_connector_extra_config`` (set by the worker
launchers) and, for the shared secret, the ``PRFAAS_TRANSFER_SECRET`` environment variable, so
the secret never appears in vLLM's logged config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

SECRET_ENV = "PRFAAS_TRANSFER_SECRET"


@dataclass(frozen=True)
class ConnectorConfig:
    transfer_host: str = "127.0.0.1"
    transfer_port: int = 0
    codec: str = "raw"
    connections_per_peer: int = 1
    transfer_timeout_s: float = 30.0
    staging_budget_bytes: int = 2 << 30
    staging_ttl_s: float = 120.0
    event_log: str | None = None
    link_gbps: float = 0.0  # emulate a link of this rate (0 = unlimited)
    link_latency_ms: float = 0.0  # and this one-way latency
    host_tier_bytes: int = 0  # prefill: RAM for the host prefix tier (0 = off)

    @classmethod
    def from_extra_config(cls, extra: dict[str, Any]) -> ConnectorConfig:
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, value in extra.items():
            if key not in known:
                continue
            default = getattr(cls, key)
            values[key] = type(default)(value) if default is not None else value
        return cls(**values)

    def to_extra_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}


def transfer_secret() -> bytes:
    secret = os.environ.get(SECRET_ENV, "")
    if not secret:
        raise RuntimeError(
            f"{SECRET_ENV} is not set: the KV connectors need the shared transfer secret "
            "(prfaas up generates one; pass --transfer-secret or set the variable)"
        )
    return secret.encode()
