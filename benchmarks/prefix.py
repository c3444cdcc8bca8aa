"""TTFT with prefix-aware routing vs round robin vs no prefix caching, on this machine.

Stack: 2 prefill workers + 1 decode worker + the gateway, real vLLM processes on 127.0.0.1.
Each worker's KV cache is capped at ``--worker-blocks`` blocks (vLLM's
``--num-gpu-blocks-override``), so one worker cannot hold every system prompt but the pool
can: that is where routing decides the hit rate. The prefill host tier is off by default
(``--host-tier-gb 0``) so that routing alone is measured; with it on, round robin also finds
most prompts in RAM. Workload: 8 system prompts of ~1024 tokens,
short user turns, requests sent one at a time in a fixed shuffled order; every request is
prefilled remotely (threshold 0) so the prefill pool's routing is what is measured.

Configurations, in one run: ``prefix`` (our default), ``round_robin``, and ``no-cache``
(round robin with a unique nonce at the start of every prompt, which defeats vLLM's prefix
cache exactly as disabling it would, without restarting the workers). The gateway is
restarted between configurations and the workers' prefix caches are reset.

Prints TTFT p50/p90 per configuration and the ratio against round_robin.
Usage: ``python benchmarks/prefix.py [--requests 48] [--worker-blocks 48]``.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from decode_worker.launch import start_decode  # noqa: E402
from prefill_worker.launch import start_prefill  # noqa: E402
from prfaas.model import SERVED_MODEL_NAME, prepare_model  # noqa: E402
from prfaas.settings import WorkerSettings  # noqa: E402
from prfaas.stack import start_gateway  # noqa: E402

TOPICS = ["astronomy", "baking", "chess", "diving", "etymology", "falconry", "geology",
          "horology"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def system_prompt(topic: str) -> str:
    lines = [f"You are an expert in {topic}. Reference notes follow."]
    for i in range(60):
        lines.append(f"Note {i} on {topic}: entry {i * 17 % 89} cites volume {i * 5 % 23} "
                     f"and page {i * 31 % 401}.")
    return "\n".join(lines)


def ttft(client: httpx.Client, url: str, messages: list[dict]) -> float:
    body = {"model": SERVED_MODEL_NAME, "messages": messages, "max_tokens": 4,
            "temperature": 0, "stream": True}
    start = time.perf_counter()
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data:") and '"content"' in line and '"content": ""' not in line:
                return time.perf_counter() - start
    raise RuntimeError("stream ended without content")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--worker-blocks", type=int, default=48)
    parser.add_argument("--host-tier-gb", type=float, default=0.0,
                        help="prefill host tier (0: measure routing alone)")
    args = parser.parse_args()
    prepare_model()
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"  # enables POST /reset_prefix_cache
    secret = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="prfaas-prefix-bench-"))
    common = dict(transfer_secret=secret, kv_cache_space_gb=1, host_tier_gb=args.host_tier_gb,
                  extra_vllm_args=["--num-gpu-blocks-override", str(args.worker_blocks)])
    prefills = [WorkerSettings(port=free_port(), cpu_threads_bind="0",
                               kv_events_endpoint=f"ipc://{workdir}/p{i}.kv", **common)
                for i in range(2)]
    decode = WorkerSettings(port=free_port(), transfer_port=free_port(), cpu_threads_bind="1",
                            kv_events_endpoint=f"ipc://{workdir}/d.kv", **common)
    servers = [start_prefill(p, f"prefill-{i}", workdir / f"prefill-{i}.log")
               for i, p in enumerate(prefills)]
    servers.append(start_decode(decode, "decode", workdir / "decode.log"))
    rng = random.Random(7)
    order = [rng.randrange(len(TOPICS)) for _ in range(args.requests)]
    questions = [f"Question {i}: which note cites page {i * 13 % 401}?"
                 for i in range(args.requests)]
    results: dict[str, list[float]] = {}
    try:
        for server in servers:
            server.wait_ready()
        for config in ("prefix", "round_robin", "no-cache"):
            for server in servers:
                httpx.post(f"{server.url}/reset_prefix_cache", timeout=30)
            port = free_port()
            policy = "prefix" if config == "prefix" else "round_robin"
            gateway = start_gateway(
                ["--port", str(port), "--routing-policy", policy,
                 "--remote-prefill-threshold", "0",
                 "--prefill-urls", ",".join(f"http://127.0.0.1:{p.port}" for p in prefills),
                 "--decode-urls", f"http://127.0.0.1:{decode.port}",
                 "--decode-transfer-addresses", f"127.0.0.1:{decode.transfer_port}",
                 "--prefill-kv-events", f"ipc://{workdir}/p0.kv,ipc://{workdir}/p1.kv",
                 "--decode-kv-events", f"ipc://{workdir}/d.kv"],
                workdir / f"gateway-{config}.log")
            try:
                gateway.wait_ready()
                url = f"http://127.0.0.1:{port}"
                times = []
                with httpx.Client(timeout=300) as client:
                    for topic_index, question in zip(order, questions, strict=True):
                        system = system_prompt(TOPICS[topic_index])
                        if config == "no-cache":
                            system = f"[{secrets.token_hex(4)}] " + system
                        messages = [{"role": "system", "content": system},
                                    {"role": "user", "content": question}]
                        times.append(ttft(client, url, messages))
                results[config] = times
            finally:
                gateway.stop()
    finally:
        for server in servers:
            server.stop()
    baseline = statistics.median(results["round_robin"])
    print(f"TTFT over {args.requests} requests, 8 system prompts (~1024 tokens), 2 prefill + "
          f"1 decode, {args.worker_blocks} KV blocks per worker, host tier "
          f"{args.host_tier_gb} GiB")
    print(f"{'config':<12} {'p50 ms':>8} {'p90 ms':>8} {'p50 vs round_robin':>20}")
    for config, times in results.items():
        p50, p90 = statistics.median(times), percentile(times, 0.9)
        print(f"{config:<12} {p50 * 1e3:8.0f} {p90 * 1e3:8.0f} {baseline / p50:19.2f}x")


if __name__ == "__main__":
    main()
