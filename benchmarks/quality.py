"""Output quality through the full stack per KV codec: exact match and first divergence.

Starts one decode worker and one prefill worker per codec (real vLLM processes on
127.0.0.1), sends ``--prompts`` prompts of >= 256 tokens through prefill -> KV over TCP ->
decode with ``--max-tokens`` greedy tokens each, and compares every codec's output token ids
with the raw codec's. Reports per codec: exact-match rate, mean tokens to first divergence
(over the prompts that diverge; ``max-tokens`` when none does) and whether every output is
non-empty text. Goals: lossless 100% identical; fp8 >= 95% of prompts exact.

Also prints the measured prefill time of one ~4000-token prompt (used as ``--prefill-s`` by
``benchmarks/transfer.py``).

Usage: ``python benchmarks/quality.py [--prompts 50] [--max-tokens 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from decode_worker.launch import start_decode  # noqa: E402
from gateway.disagg import DecodeTarget, run_disaggregated  # noqa: E402
from gateway.tokenizer import PromptTokenizer  # noqa: E402
from prefill_worker.launch import start_prefill  # noqa: E402
from prfaas.model import DEFAULT_MODEL_DIR, SERVED_MODEL_NAME, prepare_model  # noqa: E402
from prfaas.settings import WorkerSettings  # noqa: E402

SUBJECTS = ["a lighthouse", "a glacier", "a printing press", "a beehive", "a violin",
            "a steam engine", "a coral reef", "a windmill", "a telescope", "a clock tower"]
ASKS = ["Summarize it in two sentences.", "List three facts from it.",
        "What is its main idea?", "Write a title for it.", "Explain it to a child."]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prompts(tokenizer: PromptTokenizer, count: int) -> list[list[int]]:
    out = []
    for i in range(count):
        subject = SUBJECTS[i % len(SUBJECTS)]
        body = " ".join(f"Paragraph {p}: {subject} was studied by team {i * 7 + p} in year "
                        f"{1900 + (i * 13 + p * 29) % 120}, and they wrote down what they saw."
                        for p in range(12 + i % 7))
        ids = tokenizer.chat([{"role": "user",
                               "content": body + "\n" + ASKS[i % len(ASKS)]}])
        assert len(ids) >= 256, len(ids)
        out.append(ids)
    return out


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--codecs", default="raw,lossless,fp8,int8")
    args = parser.parse_args()
    prepare_model()
    codecs = args.codecs.split(",")
    secret = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="prfaas-quality-"))
    decode = WorkerSettings(port=free_port(), transfer_port=free_port(), transfer_secret=secret,
                            cpu_threads_bind="1")
    prefills = {c: WorkerSettings(port=free_port(), transfer_secret=secret, codec=c,
                                  cpu_threads_bind="0",
                                  event_log=str(workdir / f"prefill-{c}.jsonl"))
                for c in codecs}
    servers = [start_decode(decode, "decode", workdir / "decode.log")]
    servers += [start_prefill(s, f"prefill-{c}", workdir / f"prefill-{c}.log")
                for c, s in prefills.items()]
    tokenizer = PromptTokenizer(str(DEFAULT_MODEL_DIR))
    batch = prompts(tokenizer, args.prompts)
    target = DecodeTarget(f"http://127.0.0.1:{decode.port}", f"127.0.0.1:{decode.transfer_port}")
    outputs: dict[str, list[list[int]]] = {c: [] for c in codecs}
    texts: dict[str, list[str]] = {c: [] for c in codecs}
    try:
        for server in servers:
            server.wait_ready()
        long_prompt = tokenizer.chat([{"role": "user", "content": " ".join(
            f"Line {i}: the survey of {SUBJECTS[i % 10]} continued." for i in range(400))}])
        long_prompt = long_prompt[:4000]
        raw_url = f"http://127.0.0.1:{prefills[codecs[0]].port}"
        start = time.perf_counter()
        httpx.post(f"{raw_url}/v1/completions", timeout=300, json={
            "model": SERVED_MODEL_NAME, "prompt": long_prompt, "max_tokens": 1})
        prefill_s = time.perf_counter() - start
        for codec in codecs:
            url = f"http://127.0.0.1:{prefills[codec].port}"
            for ids in batch:
                response = asyncio.run(run_disaggregated(
                    url, target, SERVED_MODEL_NAME, ids,
                    {"max_tokens": args.max_tokens, "temperature": 0, "return_token_ids": True,
                     "ignore_eos": True}))
                choice = response["choices"][0]
                outputs[codec].append(list(choice["token_ids"]))
                texts[codec].append(choice["text"])
    finally:
        for server in servers:
            server.stop()
    reference = outputs[codecs[0]]
    print(f"{args.prompts} prompts of {min(map(len, batch))}-{max(map(len, batch))} tokens, "
          f"{args.max_tokens} greedy tokens each, against codec {codecs[0]!r}")
    print(f"{'codec':<10} {'exact':>7} {'mean first divergence':>22} {'non-empty':>10}")
    for codec in codecs:
        divergences = [first_divergence(ref, out)
                       for ref, out in zip(reference, outputs[codec], strict=True)]
        exact = sum(d is None for d in divergences) / len(divergences)
        diverged = [d for d in divergences if d is not None]
        mean_div = statistics.mean(diverged) if diverged else float(args.max_tokens)
        non_empty = all(t.strip() for t in texts[codec])
        print(f"{codec:<10} {exact:7.0%} {mean_div:22.1f} {str(non_empty):>10}")
    print(f"prefill of a {len(long_prompt)}-token prompt on the prefill worker: {prefill_s:.2f} s")


if __name__ == "__main__":
    main()
