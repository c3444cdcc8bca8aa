"""The disaggregated request path: prefill on one vLLM worker, decode on another.

What vLLM's toy proxy does, for prfaas workers: send the prompt (as token ids) to a prefill
worker with ``max_tokens=1`` and transfer params naming a fresh transfer id and the decode
worker's KV address; the prefill connector streams the KV there as it computes. Then send
the same prompt to the decode worker with the params the prefill returned; its connector
installs the KV (or recomputes if the transfer failed) and generation continues.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from transfer.params import TransferParams


@dataclass(frozen=True)
class DecodeTarget:
    url: str  # the decode worker's vLLM HTTP base URL
    transfer_address: str  # host:port of its KV receiver


def new_transfer(target: DecodeTarget, first_block: int = 0) -> TransferParams:
    return TransferParams(uuid.uuid4().hex, target.transfer_address, first_block=first_block)


@dataclass(frozen=True)
class PrefillResult:
    kv_params: dict[str, Any]  # what the decode worker needs to find the transfer
    cached_tokens: int  # prompt tokens the prefill worker served from its prefix cache


async def prefill(client: httpx.AsyncClient, prefill_url: str, model: str,
                  prompt_token_ids: list[int], transfer: TransferParams,
                  headers: dict[str, str] | None = None) -> PrefillResult:
    """Run the prompt on a prefill worker, which streams its KV to the decode worker."""
    body = {
        "model": model, "prompt": prompt_token_ids, "max_tokens": 1, "temperature": 0,
        "stream": False, "kv_transfer_params": transfer.for_prefill(),
    }
    response = await client.post(f"{prefill_url}/v1/completions", json=body, headers=headers)
    response.raise_for_status()
    result = response.json()
    params = result.get("kv_transfer_params")
    if not params:
        raise RuntimeError(f"prefill worker {prefill_url} returned no kv_transfer_params; "
                           "is it running the prfaas producer connector?")
    details = (result.get("usage") or {}).get("prompt_tokens_details") or {}
    return PrefillResult(params, int(details.get("cached_tokens") or 0))


def decode_body(model: str, prompt_token_ids: list[int], sampling: dict[str, Any],
                kv_params: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
    body = {"model": model, "prompt": prompt_token_ids, "stream": stream, **sampling}
    if kv_params is not None:
        body["kv_transfer_params"] = kv_params
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


async def stream_decode(client: httpx.AsyncClient, decode_url: str, body: dict[str, Any],
                        headers: dict[str, str] | None = None
                        ) -> AsyncIterator[dict[str, Any]]:
    """Yield the decode worker's completion chunks (parsed SSE ``data:`` lines)."""
    async with client.stream("POST", f"{decode_url}/v1/completions", json=body,
                             headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
            response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield json.loads(data)


async def run_disaggregated(prefill_url: str, decode: DecodeTarget, model: str,
                            prompt_token_ids: list[int], sampling: dict[str, Any],
                            transfer: TransferParams | None = None,
                            timeout_s: float = 300.0) -> dict[str, Any]:
    """Prefill remotely, decode, and return the decode worker's (non-streamed) response."""
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        transfer = transfer or new_transfer(decode)
        done = await prefill(client, prefill_url, model, prompt_token_ids, transfer)
        body = decode_body(model, prompt_token_ids, sampling, done.kv_params, stream=False)
        response = await client.post(f"{decode.url}/v1/completions", json=body)
        response.raise_for_status()
        return response.json()
