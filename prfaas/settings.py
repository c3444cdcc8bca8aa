"""Settings for the worker services, from CLI flags and ``PRFAAS_*`` environment variables.

Defaults run everything on one machine, on CPU, with the default model prepared by
``prfaas model prepare``. Every field is listed in the README's settings table.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from prfaas.model import DEFAULT_MODEL_DIR, SERVED_MODEL_NAME


class WorkerSettings(BaseSettings):
    """One vLLM engine running a prfaas connector half (prefill = producer, decode = consumer)."""

    model_config = SettingsConfigDict(env_prefix="PRFAAS_", extra="ignore")

    model: str = Field(str(DEFAULT_MODEL_DIR), description="HF model directory to serve")
    served_model_name: str = Field(SERVED_MODEL_NAME, description="model id clients use")
    host: str = Field("127.0.0.1", description="HTTP bind address of the vLLM server")
    port: int = Field(8100, description="HTTP port of the vLLM server")
    transfer_host: str = Field("127.0.0.1", description="decode: KV receiver bind address")
    transfer_port: int = Field(14600, description="decode: KV receiver TCP port")
    transfer_secret: str = Field("", description="shared secret of the KV handshake")
    transfer_timeout_s: float = Field(
        30.0, description="decode: wait this long for a transfer, then recompute locally")
    codec: str = Field("raw", description="prefill: KV codec on the wire")
    connections_per_peer: int = Field(1, description="prefill: TCP connections per decode peer")
    link_gbps: float = Field(0.0, description="prefill: emulate a link of this Gbit/s (0 = off)")
    link_latency_ms: float = Field(0.0, description="prefill: emulated one-way link latency")
    host_tier_gb: float = Field(
        1.0, description="prefill: RAM for the host-memory prefix tier in GiB (0 = off)")
    dtype: str = Field(
        "float32", description="engine dtype; float32 on CPU (bf16 CPU kernels diverge)")
    max_model_len: int = Field(4096, description="context length")
    kv_cache_space_gb: int = Field(1, description="VLLM_CPU_KVCACHE_SPACE in GiB")
    cpu_threads_bind: str = Field(
        "auto", description="VLLM_CPU_OMP_THREADS_BIND: 'auto', 'nobind' or core ids")
    event_log: str | None = Field(None, description="JSON-lines KV event log path")
    kv_events_endpoint: str | None = Field(
        None, description="publish vLLM KV cache events here (ipc://PATH or tcp://*:PORT; "
                          "replay on ipc://PATH.replay or PORT+1)")
    extra_vllm_args: list[str] = Field(default_factory=list,
                                       description="further vLLM server arguments")
