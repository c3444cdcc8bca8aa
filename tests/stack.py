"""Start real vLLM worker processes on 127.0.0.1 for integration tests (once per module).

Every process is started by the test module that uses it and stopped by it; logs and KV event
logs go to the module's temporary directory. Workers are pinned to separate cores where the
machine has them, and use a small KV space.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from decode_worker.launch import start_decode
from gateway.disagg import DecodeTarget, run_disaggregated
from prefill_worker.launch import start_prefill
from prfaas.events import read_events
from prfaas.model import SERVED_MODEL_NAME, prepare_model
from prfaas.settings import WorkerSettings
from prfaas.vllm_server import ServerProcess, start_server
from transfer.params import TransferParams

MODEL = SERVED_MODEL_NAME


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Worker:
    server: ServerProcess
    settings: WorkerSettings
    events_path: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def transfer_address(self) -> str:
        return f"{self.settings.transfer_host}:{self.settings.transfer_port}"

    def events(self, name: str | None = None, **match) -> list[dict]:
        rows = read_events(self.events_path)
        return [r for r in rows if (name is None or r["event"] == name)
                and all(r.get(k) == v for k, v in match.items())]


@dataclass
class Launcher:
    """Starts workers in one directory with one shared transfer secret; stops them all."""

    directory: Path
    secret: str = field(default_factory=lambda: secrets.token_hex(16))
    started: list[Worker] = field(default_factory=list)

    def _settings(self, name: str, **overrides) -> WorkerSettings:
        prepare_model()
        values = dict(port=free_port(), transfer_port=free_port(), transfer_secret=self.secret,
                      event_log=str(self.directory / f"{name}.events.jsonl"),
                      transfer_timeout_s=8.0, kv_cache_space_gb=1)
        values.update(overrides)
        return WorkerSettings(**values)

    def start(self, role: str, name: str, **overrides) -> Worker:
        settings = self._settings(name, **overrides)
        log_path = self.directory / f"{name}.log"
        if role == "prefill":
            server = start_prefill(settings, name, log_path)
        elif role == "decode":
            server = start_decode(settings, name, log_path)
        else:  # a plain vLLM server: the reference for exactness
            server = start_server(name, settings, None, log_path)
        worker = Worker(server, settings, Path(settings.event_log))
        self.started.append(worker)
        return worker

    def wait_ready(self) -> None:
        for worker in self.started:
            worker.server.wait_ready()

    def stop_all(self) -> None:
        for worker in self.started:
            worker.server.stop()


def complete(url: str, prompt: list[int], max_tokens: int = 24, **extra) -> dict:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "return_token_ids": True, **extra}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=300)
    response.raise_for_status()
    return response.json()


def output_ids(response: dict) -> list[int]:
    return list(response["choices"][0]["token_ids"])


def disaggregated(prefill: Worker, decode: Worker, prompt: list[int], max_tokens: int = 24,
                  transfer: TransferParams | None = None) -> dict:
    target = DecodeTarget(decode.url, decode.transfer_address)
    return asyncio.run(run_disaggregated(
        prefill.url, target, MODEL, prompt,
        {"max_tokens": max_tokens, "temperature": 0, "return_token_ids": True},
        transfer=transfer))


def decode_only(decode: Worker, prompt: list[int], transfer: TransferParams,
                max_tokens: int = 24) -> dict:
    """Ask decode to wait for a transfer someone else (a test peer, a dead prefill) owes."""
    return complete(decode.url, prompt, max_tokens,
                    kv_transfer_params={**transfer.for_decode(), "prfaas_num_tokens": len(prompt)})


def metric(url: str, name: str) -> float:
    """Sum of a Prometheus metric's samples on a vLLM server's /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total
