"""The product path end to end: openai client -> gateway -> prefill workers -> KV over TCP ->
decode worker, against a plain vLLM server, all real processes on 127.0.0.1.

One module-scoped stack: a reference vLLM, two prefill workers (publishing KV events), one
decode worker and the gateway. Tests that kill workers run last.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest
from prompts import chat, long_document
from stack import Launcher, metric

from prfaas.stack import start_gateway
from router.block_hash import block_hashes, event_key
from router.kv_events import BlockStored, KVEventSubscriber

pytestmark = pytest.mark.slow
MODEL = "SmolLM2-135M-Instruct"
THRESHOLD = 256


class Stack:
    def __init__(self, directory):
        self.launcher = Launcher(directory)
        self.events: dict[str, list[BlockStored]] = {"prefill-0": [], "prefill-1": []}
        self.subscribers = []
        launcher = self.launcher
        self.reference = launcher.start("reference", "reference", cpu_threads_bind="0")
        self.prefills = []
        for i in range(2):
            endpoint = f"ipc://{directory}/prefill-{i}.kv"
            self.prefills.append(launcher.start(
                "prefill", f"prefill-{i}", cpu_threads_bind="0", kv_events_endpoint=endpoint))
            self.subscribers.append(KVEventSubscriber(
                endpoint, lambda seq, batch, name=f"prefill-{i}": self._stored(name, batch)))
        self.decode = launcher.start("decode", "decode", cpu_threads_bind="1",
                                     kv_events_endpoint=f"ipc://{directory}/decode.kv")
        from stack import free_port

        self.port = free_port()
        self.gateway_args = [
            "--port", str(self.port), "--remote-prefill-threshold", str(THRESHOLD),
            "--prefill-urls", ",".join(p.url for p in self.prefills),
            "--decode-urls", self.decode.url,
            "--decode-transfer-addresses", self.decode.transfer_address,
            "--prefill-kv-events", ",".join(f"ipc://{directory}/prefill-{i}.kv" for i in range(2)),
            "--decode-kv-events", f"ipc://{directory}/decode.kv"]
        self.directory = directory
        self.gateway = start_gateway(self.gateway_args, directory / "gateway.log")
        for subscriber in self.subscribers:
            subscriber.start()
        launcher.wait_ready()
        self.gateway.wait_ready()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", timeout=120,
                                    max_retries=0)
        self.reference_client = openai.OpenAI(base_url=f"{self.reference.url}/v1",
                                              api_key="unused", timeout=120, max_retries=0)

    def _stored(self, name: str, batch) -> None:
        self.events[name].extend(e for e in batch.events if isinstance(e, BlockStored))

    def stop(self) -> None:
        for subscriber in self.subscribers:
            subscriber.stop()
        self.gateway.stop()
        self.launcher.stop_all()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("gateway"))
    try:
        yield stack
    finally:
        stack.stop()


def greedy_chat(client: openai.OpenAI, messages: list[dict], max_tokens: int = 24, **extra):
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **extra)


def user(text: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": text}]


def test_openai_client_chat_stream_and_completion(stack):
    messages = user("Name three colors and one fruit of each color.")
    raw = greedy_chat(stack.client, messages, max_tokens=40)
    full = raw.parse()
    reference = stack.reference_client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=40, temperature=0)
    assert full.object == "chat.completion" and full.id.startswith("chatcmpl-")
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].message.content == reference.choices[0].message.content
    assert full.choices[0].finish_reason == reference.choices[0].finish_reason
    prompt_tokens = len(chat(messages[0]["content"]))
    assert full.usage.prompt_tokens == reference.usage.prompt_tokens == prompt_tokens
    assert full.usage.completion_tokens == reference.usage.completion_tokens
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = stack.client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=40, temperature=0, stream=True,
        stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == full.choices[0].message.content
    assert finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    assert usage.prompt_tokens == full.usage.prompt_tokens

    completion = stack.client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    expected = stack.reference_client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert completion.choices[0].text == expected.choices[0].text
    assert completion.usage.prompt_tokens == expected.usage.prompt_tokens
    assert completion.usage.completion_tokens == expected.usage.completion_tokens


def test_greedy_output_equals_reference_remote_and_local_paths(stack):
    shared = long_document(30)
    cases = [
        user(long_document(45) + "\nWhich note mentions the most visitors?"),
        user(shared + "\nSummarize the notes about rivers.", system="You are an archivist."),
        user(shared + "\nHow many notes are about trains?", system="You are an archivist."),
        user(long_document(20) + "\nList the notes about gardens.", system="Gardens desk."),
        user(long_document(25) + "\nWhat was repaired most often?", system="Repairs desk."),
    ]
    for number, messages in enumerate(cases):
        loaded_before = len(stack.decode.events("kv_loaded"))
        raw = greedy_chat(stack.client, messages)
        expected = stack.reference_client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=24, temperature=0)
        response = raw.parse()
        assert response.choices[0].message.content == expected.choices[0].message.content
        if number == 2:
            # Shares ~900 tokens with case 1, which decode-0 now holds: the rest is below
            # the threshold, so decode prefills it locally on top of its cached prefix.
            assert raw.headers["x-prfaas-route"] == "local>decode-0"
            assert response.usage.prompt_tokens_details.cached_tokens >= 7 * 128
            continue
        assert raw.headers["x-prfaas-route"].startswith("remote:prefill-")
        loaded = stack.decode.events("kv_loaded")
        assert len(loaded) == loaded_before + 1, "decode recomputed instead of loading KV"
        assert loaded[-1]["tokens"] > 0

    short = user("What is the capital of France?")
    assert len(chat(short[0]["content"])) < THRESHOLD
    registered_before = len(stack.decode.events("load_registered"))
    raw = greedy_chat(stack.client, short)
    expected = stack.reference_client.chat.completions.create(
        model=MODEL, messages=short, max_tokens=24, temperature=0)
    assert raw.parse().choices[0].message.content == expected.choices[0].message.content
    assert raw.headers["x-prfaas-route"] == "local>decode-0"
    assert len(stack.decode.events("load_registered")) == registered_before


def test_router_block_hashes_equal_vllm_kv_events(stack):
    messages = user(long_document(40) + "\nCount the bridges.", system="Hash check.")
    raw = greedy_chat(stack.client, messages, max_tokens=2)
    worker = raw.headers["x-prfaas-route"].split(">")[0].removeprefix("remote:")
    token_ids = chat(messages[1]["content"], system="Hash check.")
    ours = [event_key(h) for h in block_hashes(token_ids, 128)]
    assert len(ours) >= 5
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reported = [h for event in stack.events[worker] for h in event.block_hashes]
        if set(ours) <= set(reported):
            break
        time.sleep(0.1)
    reported = [h for event in stack.events[worker] for h in event.block_hashes]
    assert set(ours) <= set(reported), "router hashes differ from vLLM's block hashes"
    stored = next(e for e in stack.events[worker] if ours[0] in e.block_hashes)
    assert stored.block_size == 128


def test_shared_prefixes_stick_to_one_prefill_worker_and_hit_its_cache(stack):
    systems = [f"You keep archive number {k}.\n" + long_document(12 + k) for k in range(10)]
    routes = {}
    for k, system in enumerate(systems):
        routes[k] = greedy_chat(stack.client, user("Summarize.", system=system),
                                max_tokens=2).headers["x-prfaas-route"].split(">")[0]
    assert {"remote:prefill-0", "remote:prefill-1"} <= set(routes.values()), routes

    system = systems[3]
    worker = next(p for p in stack.prefills if routes[3].endswith(p.server.name))
    hits_before = metric(worker.url, "vllm:prefix_cache_hits_total")
    for question in ("Which notes are about rivers?", "Which notes are about trains?",
                     "Which notes mention repairs?"):
        # A long, distinct user turn keeps the uncached part above the remote threshold even
        # though decode-0 now holds the shared system prompt.
        turn = question + "\n" + long_document(14)
        raw = greedy_chat(stack.client, user(turn, system=system), max_tokens=2)
        assert raw.headers["x-prfaas-route"].split(">")[0] == routes[3]
    hits_after = metric(worker.url, "vllm:prefix_cache_hits_total")
    assert hits_after - hits_before >= 3 * 128, "the shared prefix was not served from cache"


def wire_bytes_of_last_load(stack) -> tuple[int, dict]:
    loaded = stack.decode.events("kv_loaded")[-1]
    frames = stack.decode.events("frame_received", transfer_id=loaded["transfer_id"])
    return sum(f["wire_bytes"] for f in frames), loaded


def test_multiturn_second_turn_sends_only_what_decode_lacks(stack):
    system = "You are a patient tutor.\n" + long_document(14)
    turn1 = user("Which notes are about libraries?", system=system)
    raw1 = greedy_chat(stack.client, turn1, max_tokens=24)
    first = raw1.parse()
    bytes1, loaded1 = wire_bytes_of_last_load(stack)
    assert raw1.headers["x-prfaas-route"].startswith("remote:")
    time.sleep(1.0)  # let decode's KV events confirm the blocks it now holds
    turn2 = turn1 + [{"role": "assistant", "content": first.choices[0].message.content},
                     {"role": "user", "content": "And which are about markets? "
                                                 + long_document(6)}]
    raw2 = greedy_chat(stack.client, turn2, max_tokens=24)
    second = raw2.parse()
    expected = stack.reference_client.chat.completions.create(
        model=MODEL, messages=turn2, max_tokens=24, temperature=0)
    assert second.choices[0].message.content == expected.choices[0].message.content
    assert raw2.headers["x-prfaas-route"].startswith("remote:")
    bytes2, loaded2 = wire_bytes_of_last_load(stack)
    assert loaded2["transfer_id"] != loaded1["transfer_id"]
    assert loaded2["first_block"] > 0, "decode did not reuse its cached turn-1 blocks"
    assert 0 < bytes2 < bytes1, (bytes1, bytes2)
    assert second.usage.prompt_tokens_details.cached_tokens >= 0


def test_restarted_gateway_rebuilds_its_prefix_index(stack):
    before = httpx.get(f"{stack.url}/debug/prefix-index", timeout=10).json()["blocks"]
    assert before.get("decode-0", 0) > 0
    stack.gateway.stop()
    stack.gateway = start_gateway(stack.gateway_args, stack.directory / "gateway.log")
    stack.gateway.wait_ready()
    deadline = time.monotonic() + 20
    after: dict = {}
    while time.monotonic() < deadline:
        after = httpx.get(f"{stack.url}/debug/prefix-index", timeout=10).json()["blocks"]
        if after.get("decode-0", 0) >= before["decode-0"] * 0.9:
            break
        time.sleep(0.5)
    assert after.get("decode-0", 0) > 0, after
    for worker, count in before.items():
        assert after.get(worker, 0) >= count * 0.9, (before, after)


def test_bad_requests_get_openai_errors(stack):
    url = f"{stack.url}/v1/chat/completions"
    cases = [
        (b"{not json", 400),
        (json.dumps({"model": MODEL}).encode(), 400),
        (json.dumps({"model": MODEL, "messages": "hello"}).encode(), 400),
        (json.dumps({"model": MODEL, "messages": [{"role": "user", "content": 5}]}).encode(),
         400),
        (json.dumps({"model": "gpt-nope", "messages": user("hi")}).encode(), 404),
        (json.dumps({"model": MODEL, "messages": user("hi"), "max_tokens": 0}).encode(), 400),
        (json.dumps({"model": MODEL, "messages": user("hi"), "max_tokens": -3}).encode(), 400),
        (json.dumps({"model": MODEL, "messages": user("hi"), "tools": []}).encode(), 400),
        (json.dumps({"model": MODEL, "messages": user(long_document(400))}).encode(), 400),
    ]
    for body, status in cases:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"},
                              timeout=60)
        assert response.status_code == status, (body[:80], response.text)
        error = response.json()["error"]
        assert error["message"] and error["type"]
    too_long = httpx.post(url, json={"model": MODEL, "messages": user(long_document(400))})
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    missing = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL}, timeout=30)
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "prompt"
    with pytest.raises(openai.NotFoundError):
        stack.client.chat.completions.create(model="nope", messages=user("hi"))
    assert httpx.get(f"{stack.url}/health").status_code == 200


def test_killed_prefill_worker_is_routed_around(stack):
    system = "You keep the orchard registry.\n" + long_document(19)

    def turn(i: int) -> list[dict]:  # distinct long user turns: uncached on decode-0
        return user(f"Question {i} about orchards.\n" + long_document(14), system=system)

    first = greedy_chat(stack.client, turn(0)).headers["x-prfaas-route"]
    victim = next(p for p in stack.prefills if first.startswith(f"remote:{p.server.name}>"))
    victim.server.kill()
    routes = []
    for i in range(1, 4):
        messages = turn(i)
        raw = greedy_chat(stack.client, messages)
        expected = stack.reference_client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=24, temperature=0)
        assert raw.parse().choices[0].message.content == expected.choices[0].message.content
        routes.append(raw.headers["x-prfaas-route"])
    assert not any(r.startswith(f"remote:{victim.server.name}>") for r in routes), routes


def test_killed_decode_worker_ends_stream_with_clean_error(stack):
    stream = stack.client.chat.completions.create(
        model=MODEL, messages=user("Write a very long story about a lighthouse keeper."),
        max_tokens=1500, temperature=0, stream=True)
    killer = None
    started = time.monotonic()
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for chunk in stream:
            if killer is None and chunk.choices and chunk.choices[0].delta.content:
                killer = threading.Thread(target=stack.decode.server.kill)
                killer.start()
    assert killer is not None
    killer.join()
    assert time.monotonic() - started < 90
    response = httpx.post(f"{stack.url}/v1/chat/completions",
                          json={"model": MODEL, "messages": user("hi")}, timeout=60)
    assert response.status_code == 503 and response.json()["error"]["type"]
    assert httpx.get(f"{stack.url}/health").status_code == 200
