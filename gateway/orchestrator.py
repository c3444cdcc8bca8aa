"""The request path behind the API: route, prefill (remote or not), decode, stream back.

One pooled httpx client per worker. Failure handling, in order:
- the prefill worker fails → it sits out a cooldown and the decode worker prefills locally;
- the decode worker cannot be reached before its first chunk → it sits out a cooldown and the
  request goes to another decode worker, prefilling there locally (the KV went to the dead one);
- the decode worker dies mid-stream → ``UpstreamError`` reaches the caller, which ends the
  response with a clean error.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.disagg import DecodeTarget, decode_body, new_transfer, prefill, stream_decode
from router.policy import NoHealthyWorker, RouteDecision, Router
from router.workers import DecodeWorker

log = logging.getLogger("prfaas.gateway")


class UpstreamError(RuntimeError):
    """A worker failed in a way the request cannot recover from."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


class UpstreamRejected(UpstreamError):
    """The decode worker rejected the request itself (4xx): the client's error, not ours."""


@dataclass
class Generation:
    """What one request did, for logs, usage and tests."""

    decision: RouteDecision | None = None
    remote_prefill: bool = False
    prefill_cached_tokens: int = 0  # prompt tokens the prefill worker took from its cache
    decode_worker: str = ""
    fallbacks: list[str] = field(default_factory=list)

    def cached_tokens(self, decode_reported: int) -> int:
        """Prompt tokens served from cache instead of computed: the prefill worker's prefix
        hits on the remote path (decode's count there includes the KV we shipped), the
        decode worker's own hits on the local path."""
        return self.prefill_cached_tokens if self.remote_prefill else decode_reported


class Orchestrator:
    def __init__(self, router: Router, model: str, timeout_s: float,
                 worker_cooldown_s: float) -> None:
        self.router = router
        self.model = model
        self.worker_cooldown_s = worker_cooldown_s
        timeout = httpx.Timeout(timeout_s, connect=5.0)
        workers = [*router.pools.prefill, *router.pools.decode]
        self.clients = {w.url: httpx.AsyncClient(timeout=timeout) for w in workers}

    async def aclose(self) -> None:
        for client in self.clients.values():
            await client.aclose()

    async def generate(self, token_ids: list[int], sampling: dict[str, Any],
                       generation: Generation, headers: dict[str, str] | None = None
                       ) -> AsyncIterator[dict[str, Any]]:
        """Yield the decode worker's completion chunks for ``token_ids``."""
        try:
            decision = self.router.route(token_ids)
        except NoHealthyWorker as exc:
            raise UpstreamError(str(exc), status=503) from exc
        generation.decision = decision
        kv_params = await self._remote_prefill(decision, token_ids, generation, headers)
        tried: set[str] = set()
        decode: DecodeWorker = decision.decode
        while True:
            tried.add(decode.name)
            generation.decode_worker = decode.name
            body = decode_body(self.model, token_ids, sampling, kv_params, stream=True)
            started = False
            decode.begin(len(token_ids))
            try:
                async for chunk in stream_decode(self.clients[decode.url], decode.url, body,
                                                 headers):
                    started = True
                    yield chunk
                return
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if 400 <= status < 500:
                    raise UpstreamRejected(_upstream_message(exc.response), status) from exc
                failure: Exception = exc
            except httpx.HTTPError as exc:
                failure = exc
            finally:
                decode.end(len(token_ids))
            decode.mark_down(self.worker_cooldown_s)
            if started:
                raise UpstreamError(f"decode worker {decode.name} failed mid-stream: "
                                    f"{failure!r}") from failure
            log.warning("decode worker %s failed before its first token (%r); trying another",
                        decode.name, failure)
            generation.fallbacks.append(f"decode {decode.name} unreachable")
            try:
                decode, _ = self.router.choose_decode(exclude=tried)
            except NoHealthyWorker as exc:
                raise UpstreamError("no healthy decode worker", status=503) from exc
            kv_params = None  # the KV (if any) went to the failed worker: prefill locally

    async def _remote_prefill(self, decision: RouteDecision, token_ids: list[int],
                              generation: Generation, headers: dict[str, str] | None
                              ) -> dict[str, Any] | None:
        worker = decision.prefill
        if worker is None:
            return None
        target = DecodeTarget(decision.decode.url, decision.decode.transfer_address)
        transfer = new_transfer(target, first_block=decision.decode_cached_blocks)
        worker.begin(len(token_ids))
        try:
            done = await prefill(self.clients[worker.url], worker.url, self.model, token_ids,
                                 transfer, headers)
        except (httpx.HTTPError, RuntimeError) as exc:
            worker.mark_down(self.worker_cooldown_s)
            log.warning("prefill worker %s failed (%r); decode prefills locally",
                        worker.name, exc)
            generation.fallbacks.append(f"prefill {worker.name} failed")
            return None
        finally:
            worker.end(len(token_ids))
        generation.remote_prefill = True
        generation.prefill_cached_tokens = done.cached_tokens
        return done.kv_params


def _upstream_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        return str(error.get("message") or response.text)
    except ValueError:
        return response.text
