"""`prfaas up`: gateway + N prefill + M decode workers as separate processes on this machine.

Ports are consecutive from the base ports in ``StackSettings``; a transfer secret is generated
unless one is given. Workers are spread over the machine's cores. The gateway runs as its own
process (``prfaas gateway``) with static worker lists.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from decode_worker.launch import start_decode
from prefill_worker.launch import start_prefill
from prfaas.model import DEFAULT_MODEL_DIR, SERVED_MODEL_NAME, prepare_model
from prfaas.settings import WorkerSettings
from prfaas.vllm_server import REPO_ROOT, ServerProcess


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRFAAS_UP_", extra="ignore")

    prefill_workers: int = Field(1, description="number of prefill workers")
    decode_workers: int = Field(1, description="number of decode workers")
    gateway_port: int = Field(8000, description="gateway HTTP port")
    prefill_base_port: int = Field(8100, description="first prefill worker HTTP port")
    decode_base_port: int = Field(8200, description="first decode worker HTTP port")
    transfer_base_port: int = Field(14600, description="first decode KV receiver port")
    model: str = Field(str(DEFAULT_MODEL_DIR), description="model directory")
    served_model_name: str = Field(SERVED_MODEL_NAME, description="model id clients use")
    max_model_len: int = Field(4096, description="context length")
    transfer_secret: str = Field("", description="KV handshake secret (generated if empty)")
    remote_prefill_threshold: int = Field(256, description="see the gateway setting")
    routing_policy: str = Field("prefix", description="prefix, round_robin or least_load")
    log_dir: str = Field(str(REPO_ROOT / ".run"), description="worker logs and event logs")


@dataclass
class Stack:
    settings: StackSettings
    servers: list[ServerProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.gateway_port}"

    def start(self) -> None:
        s = self.settings
        if s.model == str(DEFAULT_MODEL_DIR):
            prepare_model()
        secret = s.transfer_secret or secrets.token_hex(32)
        logs = Path(s.log_dir)
        cores = os.cpu_count() or 1
        common = dict(model=s.model, served_model_name=s.served_model_name,
                      max_model_len=s.max_model_len, transfer_secret=secret)
        logs.mkdir(parents=True, exist_ok=True)
        prefill_urls, decode_urls, transfer_addrs = [], [], []
        for i in range(s.prefill_workers):
            worker = WorkerSettings(port=s.prefill_base_port + i, cpu_threads_bind=str(i % cores),
                                    event_log=str(logs / f"prefill-{i}.events.jsonl"),
                                    kv_events_endpoint=f"ipc://{logs}/prefill-{i}.kv", **common)
            self.servers.append(start_prefill(worker, f"prefill-{i}", logs / f"prefill-{i}.log"))
            prefill_urls.append(f"http://127.0.0.1:{worker.port}")
        for i in range(s.decode_workers):
            worker = WorkerSettings(port=s.decode_base_port + i,
                                    transfer_port=s.transfer_base_port + i,
                                    cpu_threads_bind=str((s.prefill_workers + i) % cores),
                                    event_log=str(logs / f"decode-{i}.events.jsonl"),
                                    kv_events_endpoint=f"ipc://{logs}/decode-{i}.kv", **common)
            self.servers.append(start_decode(worker, f"decode-{i}", logs / f"decode-{i}.log"))
            decode_urls.append(f"http://127.0.0.1:{worker.port}")
            transfer_addrs.append(f"127.0.0.1:{worker.transfer_port}")
        self.servers.append(start_gateway(
            ["--port", str(s.gateway_port), "--model", s.model,
             "--served-model-name", s.served_model_name, "--max-model-len", str(s.max_model_len),
             "--remote-prefill-threshold", str(s.remote_prefill_threshold),
             "--prefill-urls", ",".join(prefill_urls), "--decode-urls", ",".join(decode_urls),
             "--decode-transfer-addresses", ",".join(transfer_addrs),
             "--prefill-kv-events", ",".join(f"ipc://{logs}/prefill-{i}.kv"
                                             for i in range(s.prefill_workers)),
             "--decode-kv-events", ",".join(f"ipc://{logs}/decode-{i}.kv"
                                            for i in range(s.decode_workers)),
             "--routing-policy", s.routing_policy],
            logs / "gateway.log"))

    def wait_ready(self, timeout_s: float = 600) -> None:
        for server in self.servers:
            server.wait_ready(timeout_s)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()


def start_gateway(args: list[str], log_path: Path | None) -> ServerProcess:
    out = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    port = args[args.index("--port") + 1]
    process = subprocess.Popen([sys.executable, "-m", "prfaas", "gateway", *args],
                               stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                               start_new_session=True)
    return ServerProcess("gateway", process, f"http://127.0.0.1:{port}", log_path)
