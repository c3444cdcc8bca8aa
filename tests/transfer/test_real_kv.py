"""Codecs on real KV of the default model (computed with transformers on a real prompt)."""

from functools import cache

import pytest
import torch

from prfaas.model import DEFAULT_MODEL_DIR
from transfer.codecs import get_codec


@cache
def real_kv_layers() -> list[torch.Tensor]:
    """Layer KV shaped like vLLM's CPU cache: [blocks, kv_heads, 128, 2 * head_dim]."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32)
    text = " ".join(f"Section {i}: the committee reviewed item {i * 7 % 31} in detail."
                    for i in range(30))
    ids = tokenizer(text, return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        cache_out = model(ids, use_cache=True).past_key_values
    layers = []
    for layer in range(model.config.num_hidden_layers):
        keys, values = cache_out.layers[layer].keys, cache_out.layers[layer].values
        kv = torch.cat([keys[0], values[0]], dim=-1)  # [heads, tokens, 2 * head_dim]
        heads, tokens, width = kv.shape
        layers.append(kv.reshape(heads, tokens // 128, 128, width).permute(1, 0, 2, 3)
                      .contiguous())
    return layers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["lossless", "lossless-lz4"])
def test_lossless_round_trip_of_real_kv_is_bit_exact(name, dtype):
    codec = get_codec(name)
    for layer in real_kv_layers()[::6]:
        data = layer.to(dtype)
        payload = bytearray(codec.encode(data))
        decoded = codec.decode(payload, dtype, tuple(data.shape))
        assert torch.equal(decoded.view(torch.uint8), data.view(torch.uint8))
        raw = data.numel() * data.element_size()
        # zstd always gains on real KV; lz4 may not on float16, but never grows it much
        assert len(payload) < raw if name == "lossless" else len(payload) <= raw * 1.01


@pytest.mark.parametrize("name", ["fp8", "int8"])
def test_lossy_codecs_on_real_kv_are_small_and_close(name):
    codec = get_codec(name)
    for layer in real_kv_layers()[::6]:
        payload = bytearray(codec.encode(layer))
        decoded = codec.decode(payload, layer.dtype, tuple(layer.shape))
        assert layer.numel() * 4 / len(payload) > 3.5
        relative_l2 = ((decoded - layer).norm() / layer.norm()).item()
        assert relative_l2 < 0.05, relative_l2
