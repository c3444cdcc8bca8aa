"""The worker pools as the router sees them: address, health and in-flight load.

Load counters are kept by the gateway around each request (``begin``/``end``), so the
router's choices need no network I/O. A worker that fails a request is taken out for
``cooldown_s`` and re-admitted afterwards (active health checks come with the production
gateway).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Worker:
    name: str
    url: str
    in_flight: int = 0
    in_flight_tokens: int = 0
    down_until: float = 0.0
    failures: int = 0

    def healthy(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.down_until

    def begin(self, tokens: int) -> None:
        self.in_flight += 1
        self.in_flight_tokens += tokens

    def end(self, tokens: int) -> None:
        self.in_flight -= 1
        self.in_flight_tokens -= tokens

    def mark_down(self, cooldown_s: float) -> None:
        self.failures += 1
        self.down_until = time.monotonic() + cooldown_s


@dataclass
class PrefillWorker(Worker):
    pass


@dataclass
class DecodeWorker(Worker):
    transfer_address: str = ""  # host:port of the worker's KV receiver


@dataclass
class Pools:
    prefill: list[PrefillWorker] = field(default_factory=list)
    decode: list[DecodeWorker] = field(default_factory=list)

    @classmethod
    def from_urls(cls, prefill_urls: list[str], decode_urls: list[str],
                  decode_transfer_addresses: list[str]) -> Pools:
        if len(decode_urls) != len(decode_transfer_addresses):
            raise ValueError(f"{len(decode_urls)} decode URLs but "
                             f"{len(decode_transfer_addresses)} decode transfer addresses; "
                             "give one transfer address (host:port) per decode worker")
        return cls(
            prefill=[PrefillWorker(f"prefill-{i}", url.rstrip("/"))
                     for i, url in enumerate(prefill_urls)],
            decode=[DecodeWorker(f"decode-{i}", url.rstrip("/"), transfer_address=addr)
                    for i, (url, addr) in enumerate(zip(decode_urls, decode_transfer_addresses,
                                                        strict=True))],
        )
