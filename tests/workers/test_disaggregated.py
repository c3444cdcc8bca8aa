"""Prefill worker -> KV over TCP -> decode worker, against one plain vLLM server.

Real processes on 127.0.0.1: a reference vLLM, a prefill worker and a decode worker, started
once for this module. Greedy output must be token-identical, and the decode worker's event
log must show the KV was loaded (not recomputed), so no test here can pass by fallback.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from prompts import chat, exactness_prompts, long_document
from stack import Launcher, complete, decode_only, disaggregated, output_ids

from transfer.auth import client_handshake
from transfer.frames import FrameHeader, FrameKind, control_payload, payload_checksum
from transfer.params import TransferParams
from transfer.sender import KVSender

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("disagg"))
    try:
        launcher.start("reference", "reference", cpu_threads_bind="0")
        launcher.start("prefill", "prefill", cpu_threads_bind="0")
        launcher.start("decode", "decode", cpu_threads_bind="1")
        launcher.wait_ready()
        yield launcher
    finally:
        launcher.stop_all()


@pytest.fixture(scope="module")
def workers(stack):
    reference, prefill, decode = stack.started[:3]
    return reference, prefill, decode


@pytest.fixture(scope="module")
def reference_outputs(workers):
    reference = workers[0]
    return {name: output_ids(complete(reference.url, prompt))
            for name, prompt in exactness_prompts().items()}


def transfer_for(decode) -> TransferParams:
    return TransferParams(__import__("uuid").uuid4().hex, decode.transfer_address)


def test_greedy_output_is_token_identical_and_kv_was_loaded(workers, reference_outputs):
    _, prefill, decode = workers
    prompts = exactness_prompts()
    assert len(prompts["long"]) > 1000
    for name, prompt in prompts.items():
        transfer = transfer_for(decode)
        response = disaggregated(prefill, decode, prompt, transfer=transfer)
        assert output_ids(response) == reference_outputs[name], name
        loaded = decode.events("kv_loaded", transfer_id=transfer.transfer_id)
        assert len(loaded) == 1, f"{name}: decode did not load the KV: {decode.events()[-5:]}"
        # Blocks decode already holds (shared_b after shared_a) stay local; the rest load.
        assert loaded[0]["tokens"] + loaded[0]["first_block"] * 128 == len(prompt)
        if name == "shared_b":
            assert loaded[0]["first_block"] > 0
        assert loaded[0]["staged_bytes"] == 0
        assert not decode.events("kv_load_failed", transfer_id=transfer.transfer_id)
        usage = response["usage"]
        assert usage["prompt_tokens"] == len(prompt)
        assert usage["prompt_tokens_details"]["cached_tokens"] >= len(prompt) - 1


def test_layers_stream_while_prefill_computes(workers):
    _, prefill, decode = workers
    prompt = chat(long_document(60) + "\nList the notes about bridges.")
    transfer = transfer_for(decode)
    disaggregated(prefill, decode, prompt, max_tokens=2, transfer=transfer)
    tid = transfer.transfer_id
    frames = decode.events("frame_received", transfer_id=tid)
    done = [e for e in prefill.events("chunk_forward_done", transfer_id=tid) if e["is_last"]]
    assert frames and len(done) == 1
    forward_done_at = done[0]["t"]
    first_layer0 = min(f["received_at"] for f in frames if f["layer"] == 0)
    early = [f for f in frames if f["received_at"] < forward_done_at]
    assert first_layer0 < forward_done_at, "layer 0 arrived only after the forward pass"
    assert {f["layer"] for f in early} >= {0, 1}, "frames were not streamed per layer"
    deadline = time.monotonic() + 10
    while not prefill.events("transfer_sent", transfer_id=tid) and time.monotonic() < deadline:
        time.sleep(0.1)
    (sent,) = prefill.events("transfer_sent", transfer_id=tid)
    assert sent["ok"] and sent["codec"] == "raw" and sent["frames"] == 30
    assert sent["raw_bytes"] == sum(f["raw_bytes"] for f in frames)
    assert sent["wire_bytes"] > sent["raw_bytes"]  # raw payload plus frame headers
    assert sent["overlap"] > 0, "no transfer time overlapped the forward pass"


def _send_raw(port: int, secret: bytes, frames: list[bytes]) -> None:
    """An authenticated test peer that writes hand-made frames, then waits for them to land."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        client_handshake(sock, secret, 5)
        for frame in frames:
            sock.sendall(frame)
        time.sleep(0.5)


def _frame(kind: FrameKind, tid: str, payload: bytes, corrupt: bool = False, **fields) -> bytes:
    checksum = payload_checksum(payload) ^ (1 if corrupt else 0)
    header = FrameHeader(kind, tid, payload_len=len(payload), raw_len=len(payload),
                         checksum=checksum, **fields)
    return header.pack() + payload


def test_corrupted_frame_falls_back_to_local_recompute(stack, workers, reference_outputs):
    _, _, decode = workers
    prompt = exactness_prompts()["capital"]
    transfer = transfer_for(decode)
    tid = transfer.transfer_id
    data = bytes(64 * 3 * 128 * 128 * 4)  # one block of layer 0, shaped like the real cache
    frames = [
        _frame(FrameKind.DATA, tid, data, corrupt=True, layer=0, block_start=0, num_blocks=1,
               dtype=3, shape=(1, 3, 128, 128)),
        _frame(FrameKind.END, tid, control_payload({"frames": 1, "num_tokens": len(prompt)})),
    ]
    port = decode.settings.transfer_port
    _send_raw(port, stack.secret.encode(), frames)
    response = decode_only(decode, prompt, transfer)
    assert output_ids(response) == reference_outputs["capital"]
    failed = decode.events("kv_load_failed", transfer_id=tid)
    assert len(failed) == 1 and "checksum" in failed[0]["reason"]
    assert failed[0]["staged_bytes"] == 0
    assert not decode.events("kv_loaded", transfer_id=tid)


def test_unauthenticated_peer_is_rejected(workers, reference_outputs):
    _, _, decode = workers
    prompt = exactness_prompts()["colors"]
    transfer = transfer_for(decode)
    intruder = KVSender(b"not-the-secret", connect_timeout_s=3)
    try:
        import torch

        peer = ("127.0.0.1", decode.settings.transfer_port)
        intruder.send_layer(peer, transfer.transfer_id, 0, 0, torch.ones(1, 3, 128, 128))
        assert intruder.finish(transfer.transfer_id, {"num_tokens": len(prompt)}
                               ).result(timeout=30) is False
    finally:
        intruder.close()
    started = time.monotonic()
    response = decode_only(decode, prompt, transfer)
    assert output_ids(response) == reference_outputs["colors"]
    assert not decode.events("frame_received", transfer_id=transfer.transfer_id)
    failed = decode.events("kv_load_failed", transfer_id=transfer.transfer_id)
    assert len(failed) == 1 and "no complete transfer" in failed[0]["reason"]
    assert time.monotonic() - started < decode.settings.transfer_timeout_s + 30


def test_prefill_killed_before_and_during_transfer(stack, workers, reference_outputs):
    reference, _, decode = workers
    victim = stack.start("prefill", "victim-prefill", cpu_threads_bind="0")
    victim.server.wait_ready()
    finished_prompt = exactness_prompts()["shared_a"]
    long_prompt = chat(long_document(120) + "\nWhich notes mention orchards?")
    expected_long = output_ids(complete(reference.url, long_prompt))

    # 1. Prefill completes, then the worker dies before decode asks for the KV.
    done = transfer_for(decode)
    from gateway.disagg import prefill as run_prefill

    async def prefill_only(prompt, transfer):
        import httpx

        async with httpx.AsyncClient(timeout=300) as client:
            return await run_prefill(client, victim.url, "SmolLM2-135M-Instruct", prompt,
                                     transfer)

    asyncio.run(prefill_only(finished_prompt, done))

    # 2. A long prefill is streaming when the worker is killed.
    broken = transfer_for(decode)
    thread = threading.Thread(target=lambda: _swallow(prefill_only, long_prompt, broken))
    thread.start()
    deadline = time.monotonic() + 120
    while not decode.events("frame_received", transfer_id=broken.transfer_id):
        assert time.monotonic() < deadline, "victim never started streaming"
        time.sleep(0.05)
    victim.server.kill()
    thread.join(timeout=60)

    response = decode_only(decode, finished_prompt, done)
    assert output_ids(response) == reference_outputs["shared_a"]
    assert decode.events("kv_loaded", transfer_id=done.transfer_id)

    started = time.monotonic()
    response = decode_only(decode, long_prompt, broken)
    assert output_ids(response) == expected_long
    failed = decode.events("kv_load_failed", transfer_id=broken.transfer_id)
    assert len(failed) == 1 and failed[0]["staged_bytes"] == 0
    assert not decode.events("kv_loaded", transfer_id=broken.transfer_id)
    assert time.monotonic() - started < 120


def _swallow(fn, *args) -> None:
    try:
        asyncio.run(fn(*args))
    except Exception:
        pass  # the victim dies mid-request: its HTTP call fails, as expected
