"""OpenAI request shapes the gateway accepts, and the response/chunk shapes it returns.

Requests are validated strictly: a field we do not support is a 400 naming it, never
silently ignored. Sampling fields are passed to the workers unchanged.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SYSTEM_FINGERPRINT = "prfaas-0.1.0"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions, passed through to vLLM."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > 4:
            raise ValueError("at most 4 stop sequences")
        return stop

    def sampling(self, max_tokens: int) -> dict[str, Any]:
        params: dict[str, Any] = {"max_tokens": max_tokens}
        for name in ("temperature", "top_p", "seed", "stop"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        return params

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, gt=0)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(16, gt=0)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def reported_cached_tokens(upstream_usage: dict[str, Any] | None) -> int:
    details = (upstream_usage or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def usage_block(upstream_usage: dict[str, Any] | None, prompt_tokens: int,
                cached_tokens: int) -> dict[str, Any]:
    """OpenAI usage: completion counts from the decode worker, cached_tokens from the real
    reuse (see ``Generation.cached_tokens``)."""
    completion = int((upstream_usage or {}).get("completion_tokens") or 0)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def error_body(message: str, type_: str, code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
