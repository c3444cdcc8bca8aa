"""The OpenAI-compatible HTTP front door (FastAPI).

``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed and not), ``GET
/v1/models`` and ``GET /health``. The gateway applies the model's chat template, tokenizes,
and sends workers token ids, so routing and engine see the same tokens. Every error has
OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.orchestrator import Generation, Orchestrator, UpstreamError, UpstreamRejected
from gateway.protocol import (
    SYSTEM_FINGERPRINT,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    new_id,
    now,
    reported_cached_tokens,
    usage_block,
)
from gateway.settings import GatewaySettings
from gateway.tokenizer import PromptTokenizer
from router.kv_events import KVEventSubscriber, replay_endpoint_for, subscriber_endpoint
from router.policy import Router, RouterConfig
from router.prefix_index import PrefixIndex
from router.workers import Pools

log = logging.getLogger("prfaas.gateway")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param)


def _error_response(status: int, message: str, type_: str, code: str | None = None,
                    param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, code, param), status_code=status)


def create_app(settings: GatewaySettings, tokenizer: PromptTokenizer | None = None) -> FastAPI:
    pools = Pools.from_urls(settings.prefill_urls, settings.decode_urls,
                            settings.decode_transfer_addresses)
    router = Router(pools, RouterConfig(
        block_size=settings.block_size, remote_prefill_threshold=settings.remote_prefill_threshold,
        load_bound=settings.load_bound, prefix_key_blocks=settings.prefix_key_blocks,
        policy=settings.routing_policy))
    tokenizer = tokenizer or PromptTokenizer(settings.model)
    subscribers = event_subscribers(settings, pools, router.index)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for subscriber in subscribers:
            subscriber.start()
        app.state.orchestrator = Orchestrator(router, settings.served_model_name,
                                              settings.request_timeout_s,
                                              settings.worker_cooldown_s)
        yield
        await app.state.orchestrator.aclose()
        for subscriber in subscribers:
            subscriber.stop()

    app = FastAPI(title="prfaas gateway", version="0.1.0", lifespan=lifespan)
    app.state.router = router

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc.status, exc.message, exc.type, exc.code, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(location) or None
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        elif first.get("type") == "extra_forbidden":
            message = f"unsupported parameter: {param}"
        else:
            message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(exc)
        return _error_response(400, message, "invalid_request_error", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(exc.status_code, str(exc.detail), kind)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok",
                "prefill_healthy": sum(w.healthy() for w in pools.prefill),
                "decode_healthy": sum(w.healthy() for w in pools.decode)}

    @app.get("/debug/prefix-index")
    async def prefix_index() -> dict[str, Any]:
        """Blocks each worker is known to hold, from its KV events."""
        return {"blocks": router.index.sizes(), "policy": settings.routing_policy}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": settings.served_model_name, "object": "model", "created": 0,
            "owned_by": "prfaas", "max_model_len": settings.max_model_len}]}

    def check_request(body: ChatCompletionRequest | CompletionRequest, prompt_tokens: int
                      ) -> int:
        if body.model != settings.served_model_name:
            raise APIError(404, f"model {body.model!r} does not exist; this gateway serves "
                                f"{settings.served_model_name!r}", "not_found_error",
                           "model_not_found", "model")
        room = settings.max_model_len - prompt_tokens
        max_tokens = body.requested_max_tokens or max(room, 1)
        if prompt_tokens + max_tokens > settings.max_model_len:
            raise APIError(400, f"this model's maximum context length is "
                                f"{settings.max_model_len} tokens; the prompt has "
                                f"{prompt_tokens} and {max_tokens} more were requested",
                           "invalid_request_error", "context_length_exceeded", "messages")
        return max_tokens

    async def run(request: Request, body: ChatCompletionRequest | CompletionRequest,
                  token_ids: list[int], chat: bool) -> Any:
        max_tokens = check_request(body, len(token_ids))
        orchestrator: Orchestrator = request.app.state.orchestrator
        generation = Generation()
        chunks = orchestrator.generate(token_ids, body.sampling(max_tokens), generation)
        response_id = new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            first = await _first_chunk(chunks)
            return StreamingResponse(
                _sse(first, chunks, response_id, chat, body.include_usage,
                     settings.served_model_name, len(token_ids), generation),
                media_type="text/event-stream", headers=_route_headers(generation))
        result = await _collect(chunks, response_id, chat, settings.served_model_name,
                                len(token_ids), generation)
        return JSONResponse(result, headers=_route_headers(generation))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Any:
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        token_ids = await run_in_threadpool(tokenizer.chat, messages)
        return await run(request, body, token_ids, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Any:
        if isinstance(body.prompt, str):
            token_ids = await run_in_threadpool(tokenizer.encode_prompt, body.prompt)
        else:
            token_ids = list(body.prompt)
        return await run(request, body, token_ids, chat=False)

    return app


def _route_headers(generation: Generation) -> dict[str, str]:
    """``x-prfaas-route``: where the request ran, e.g. ``remote:prefill-1>decode-0``."""
    prefill = generation.decision.prefill if generation.decision else None
    where = f"remote:{prefill.name}" if generation.remote_prefill and prefill else "local"
    return {"x-prfaas-route": f"{where}>{generation.decode_worker}"}


def event_subscribers(settings: GatewaySettings, pools: Pools, index: PrefixIndex
                      ) -> list[KVEventSubscriber]:
    """One KV-event subscriber per worker that publishes events, feeding the prefix index."""
    subscribers = []
    pairs = [*zip(pools.prefill, settings.prefill_kv_events, strict=False),
             *zip(pools.decode, settings.decode_kv_events, strict=False)]
    for worker, endpoint in pairs:
        host = httpx.URL(worker.url).host
        name = worker.name
        subscribers.append(KVEventSubscriber(
            subscriber_endpoint(endpoint, host),
            on_batch=lambda _seq, batch, name=name: index.apply(name, batch),
            replay_endpoint=subscriber_endpoint(replay_endpoint_for(endpoint), host),
            on_reset=lambda name=name: index.reset(name)))
    return subscribers


def _api_error(exc: UpstreamError, code: str) -> APIError:
    """The client's error for a worker failure: a rejection passes through as the client's
    own mistake; anything else is a server error with ``code``."""
    if isinstance(exc, UpstreamRejected):
        return APIError(exc.status, str(exc), "invalid_request_error")
    return APIError(exc.status, str(exc), "server_error", code)


async def _first_chunk(chunks: AsyncIterator[dict[str, Any]]) -> dict[str, Any] | None:
    """Pull the first chunk before answering, so early failures become proper HTTP errors."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None
    except UpstreamError as exc:
        raise _api_error(exc, "upstream_unavailable") from exc


def _choice_delta(chunk: dict[str, Any], chat: bool) -> list[dict[str, Any]]:
    choices = []
    for choice in chunk.get("choices", []):
        text = choice.get("text", "")
        out: dict[str, Any] = {"index": choice.get("index", 0),
                               "finish_reason": choice.get("finish_reason"), "logprobs": None}
        if chat:
            out["delta"] = {"content": text} if text else {}
        else:
            out["text"] = text
        choices.append(out)
    return choices


async def _sse(first: dict[str, Any] | None, chunks: AsyncIterator[dict[str, Any]],
               response_id: str, chat: bool, include_usage: bool, model: str,
               prompt_tokens: int, generation: Generation) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    created = now()

    def frame(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        payload: dict[str, Any] = {"id": response_id, "object": obj, "created": created,
                                   "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
                                   "choices": choices}
        if include_usage:
            payload["usage"] = usage
        return f"data: {json.dumps(payload)}\n\n"

    if chat:
        yield frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None, "logprobs": None}])
    usage = None
    try:
        pending = [first] if first is not None else []
        async for chunk in _chain(pending, chunks):
            if chunk.get("usage"):
                usage = chunk["usage"]
            choices = _choice_delta(chunk, chat)
            if choices:
                yield frame(choices)
    except UpstreamError as exc:
        yield f"data: {json.dumps(error_body(str(exc), 'server_error', 'upstream_failed'))}\n\n"
        return
    if include_usage:
        cached = generation.cached_tokens(reported_cached_tokens(usage))
        yield frame([], usage_block(usage, prompt_tokens, cached))
    yield "data: [DONE]\n\n"


async def _chain(first: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]
                 ) -> AsyncIterator[dict[str, Any]]:
    for item in first:
        yield item
    async for item in rest:
        yield item


async def _collect(chunks: AsyncIterator[dict[str, Any]], response_id: str, chat: bool,
                   model: str, prompt_tokens: int, generation: Generation) -> dict[str, Any]:
    text: list[str] = []
    finish_reason = None
    usage = None
    try:
        async for chunk in chunks:
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                text.append(choice.get("text", ""))
                finish_reason = choice.get("finish_reason") or finish_reason
    except UpstreamError as exc:
        raise _api_error(exc, "upstream_failed") from exc
    content = "".join(text)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": content},
                  "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": content, "finish_reason": finish_reason,
                  "logprobs": None}
    return {"id": response_id, "object": "chat.completion" if chat else "text_completion",
            "created": now(), "model": model, "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [choice],
            "usage": usage_block(usage, prompt_tokens,
                                 generation.cached_tokens(reported_cached_tokens(usage)))}
