"""The prefill worker's host-memory tier end to end: a prompt evicted from vLLM's own (small)
KV cache is served from RAM on its next visit, with output identical to a plain vLLM server.

Reference vLLM, a prefill worker with 40 KV blocks (vLLM's --num-gpu-blocks-override) and a
host tier, and a decode worker, started once for this module.
"""

from __future__ import annotations

import pytest
from prompts import chat, long_document
from stack import Launcher, complete, disaggregated, metric, output_ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    launcher = Launcher(tmp_path_factory.mktemp("host-tier"))
    try:
        reference = launcher.start("reference", "reference", cpu_threads_bind="0")
        prefill = launcher.start("prefill", "prefill", cpu_threads_bind="0", host_tier_gb=0.5,
                                 extra_vllm_args=["--num-gpu-blocks-override", "40"])
        decode = launcher.start("decode", "decode", cpu_threads_bind="1")
        launcher.wait_ready()
        yield reference, prefill, decode
    finally:
        launcher.stop_all()


def prompt(topic: str) -> list[int]:
    return chat(long_document(40) + f"\nWhich notes are about {topic}?", system=f"{topic} desk")


def test_evicted_prefix_is_served_from_the_host_tier(workers):
    reference, prefill, decode = workers
    hot = prompt("rivers")
    assert len(hot) > 9 * 128
    expected = output_ids(complete(reference.url, hot))
    assert output_ids(disaggregated(prefill, decode, hot)) == expected
    for topic in ("trains", "bridges", "markets", "gardens"):  # 4 x 10 blocks: evicts `hot`
        disaggregated(prefill, decode, prompt(topic), max_tokens=1)
    external_before = metric(prefill.url, "vllm:external_prefix_cache_hits_total")
    local_before = metric(prefill.url, "vllm:prefix_cache_hits_total")
    loads_before = len(prefill.events("host_tier_load"))
    assert output_ids(disaggregated(prefill, decode, hot)) == expected
    loads = prefill.events("host_tier_load")[loads_before:]
    assert len(loads) == 1 and loads[0]["failed"] == 0 and loads[0]["blocks"] > 0
    external = metric(prefill.url, "vllm:external_prefix_cache_hits_total") - external_before
    local = metric(prefill.url, "vllm:prefix_cache_hits_total") - local_before
    assert external == loads[0]["blocks"] * 128  # vLLM counted exactly the blocks we loaded
    # Every full block but the one holding the last token came from vLLM's cache or ours.
    assert local + external == (len(hot) - 1) // 128 * 128
    # The connector's own counters reach the worker's /metrics.
    hits = metric(prefill.url, "prfaas:host_tier_hit_blocks_total")
    assert hits == sum(e["blocks"] - e["failed"] for e in prefill.events("host_tier_load"))
    assert metric(prefill.url, "prfaas:host_tier_stored_blocks_total") >= 5 * 9
    sent = prefill.events("transfer_sent")
    assert metric(prefill.url, "prfaas:kv_transfers_total") == len(sent)
    assert metric(prefill.url, "prfaas:kv_wire_bytes_total") == sum(e["wire_bytes"] for e in sent)
