"""Gateway settings, from CLI flags and ``PRFAAS_GATEWAY_*`` environment variables."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from prfaas.model import DEFAULT_MODEL_DIR, SERVED_MODEL_NAME

UrlList = Annotated[list[str], NoDecode]


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRFAAS_GATEWAY_", extra="ignore")

    host: str = Field("127.0.0.1", description="bind address of the gateway")
    port: int = Field(8000, description="HTTP port of the gateway")
    model: str = Field(str(DEFAULT_MODEL_DIR), description="model directory (tokenizer, template)")
    served_model_name: str = Field(SERVED_MODEL_NAME, description="model id clients use")
    max_model_len: int = Field(4096, description="context length the workers serve")
    prefill_urls: UrlList = Field(default_factory=list,
                                  description="prefill worker URLs (comma-separated)")
    decode_urls: UrlList = Field(default_factory=list,
                                 description="decode worker URLs (comma-separated)")
    decode_transfer_addresses: UrlList = Field(
        default_factory=list, description="KV address host:port of each decode worker, in order")
    prefill_kv_events: UrlList = Field(
        default_factory=list, description="each prefill worker's KV events endpoint, in order")
    decode_kv_events: UrlList = Field(
        default_factory=list, description="each decode worker's KV events endpoint, in order")
    routing_policy: str = Field("prefix", description="prefix, round_robin or least_load")
    remote_prefill_threshold: int = Field(
        256, description="uncached prompt tokens at or above which prefill runs remotely")
    load_bound: float = Field(1.25, description="no prefill worker above this x mean load")
    prefix_key_blocks: int = Field(4, description="leading blocks that key prefill affinity")
    block_size: int = Field(128, description="engine KV block size (vLLM CPU: 128)")
    worker_cooldown_s: float = Field(10.0, description="a failed worker sits out this long")
    request_timeout_s: float = Field(600.0, description="upstream worker request timeout")

    @field_validator("prefill_urls", "decode_urls", "decode_transfer_addresses",
                     "prefill_kv_events", "decode_kv_events", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        """Accept ``a,b`` (env, one flag) as well as a list (several flags, code)."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [part for item in value for part in str(item).split(",") if part]
        return value
