"""KV codecs through real workers: lossless is token-identical, fp8 stays close.

A reference vLLM, one decode worker and two prefill workers (codec ``lossless`` and ``fp8``),
started once for this module. Every request must load its KV (no fallback), so the codec's
bytes are what decode computed from.
"""

from __future__ import annotations

import time
import uuid

import pytest
from prompts import chat, long_document
from stack import Launcher, complete, disaggregated, output_ids

from transfer.params import TransferParams

pytestmark = pytest.mark.slow
MAX_TOKENS = 32


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("codecs"))
    try:
        reference = launcher.start("reference", "reference", cpu_threads_bind="0")
        lossless = launcher.start("prefill", "prefill-lossless", codec="lossless",
                                  cpu_threads_bind="0")
        fp8 = launcher.start("prefill", "prefill-fp8", codec="fp8", cpu_threads_bind="0")
        decode = launcher.start("decode", "decode", cpu_threads_bind="1")
        launcher.wait_ready()
        yield reference, lossless, fp8, decode
    finally:
        launcher.stop_all()


def prompts() -> list[list[int]]:
    return [chat(long_document(10 + 3 * i) + f"\nQuestion {i}: which note has most repairs?",
                 system=f"Desk {i}.") for i in range(6)]


def run(prefill, decode, prompt: list[int]) -> tuple[list[int], dict]:
    transfer = TransferParams(uuid.uuid4().hex, decode.transfer_address)
    out = output_ids(disaggregated(prefill, decode, prompt, MAX_TOKENS, transfer))
    loaded = decode.events("kv_loaded", transfer_id=transfer.transfer_id)
    assert len(loaded) == 1, "decode fell back instead of loading the transferred KV"
    deadline = time.monotonic() + 10
    while not prefill.events("transfer_sent", transfer_id=transfer.transfer_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return out, prefill.events("transfer_sent", transfer_id=transfer.transfer_id)[0]


def test_lossless_codec_is_token_identical_and_smaller(workers):
    reference, lossless, _, decode = workers
    for prompt in prompts():
        assert len(prompt) >= 256
        expected = output_ids(complete(reference.url, prompt, MAX_TOKENS))
        out, sent = run(lossless, decode, prompt)
        assert out == expected
        assert sent["codec"] == "lossless" and sent["ratio"] > 1.05


def test_fp8_codec_is_close_and_four_times_smaller(workers):
    reference, _, fp8, decode = workers
    divergences = []
    for prompt in prompts():
        expected = output_ids(complete(reference.url, prompt, MAX_TOKENS))
        out, sent = run(fp8, decode, prompt)
        assert sent["codec"] == "fp8" and sent["ratio"] > 3.0
        pairs = enumerate(zip(out, expected, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), None)
        divergences.append(MAX_TOKENS if first is None else first)
    # Lossy KV may change late tokens, but never the start of every answer.
    assert sum(divergences) / len(divergences) >= 8, divergences
