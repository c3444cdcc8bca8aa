"""KV codecs compared: compression ratio, encode/decode throughput and error, one table.

THE DATA IS SYNTHETIC unless ``--kv-file`` names a saved real KV: a ``torch.save``'d list of
layer tensors shaped like vLLM's CPU cache, ``[blocks, kv_heads, 128, 2 * head_dim]``. The
synthetic set is the KV of one 4096-token prompt of the default model (30 layers of
[32 blocks, 3 heads, 128 tokens, 2 x 64], float32) with KV-like structure: keys are per-channel
offsets (a few outlier channels with large offsets and spread, as post-RoPE keys show) plus a
smooth walk across tokens, values per-token-scaled noise around small channel means, value
magnitude growing with depth. Its ratios and errors are indicative only; quote numbers
measured with ``--kv-file``.

Columns: ratio = raw bytes / payload bytes; encode and decode GB/s of raw bytes (best of
``--repeats`` passes over all layers, ``--threads`` torch threads, 1 by default: per-core
figures, since each sender connection thread encodes on its own); max abs error; mean relative
error = mean |x' - x| / mean |x| over all elements; rel L2 = ||x' - x|| / ||x||.

Usage: ``python benchmarks/kv_codecs.py [--kv-file layers.pt] [--tokens 4096]
[--dtype float32|bfloat16|float16] [--codecs raw,lossless,...] [--repeats 3] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from transfer.codecs import CODECS, get_codec  # noqa: E402

LAYERS, HEADS, BLOCK, HEAD_DIM = 30, 3, 128, 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def synthetic_layer(blocks: int, layer: int, dtype: torch.dtype) -> torch.Tensor:
    """One layer of KV-like data (see the module docstring), seeded by the layer index."""
    gen = torch.Generator().manual_seed(layer)
    tokens, window = blocks * BLOCK, 8
    shape = (HEADS, 1, HEAD_DIM)
    outlier = torch.rand(shape, generator=gen) < 0.08
    k_mean = torch.randn(shape, generator=gen) * torch.where(outlier, 8.0, 1.0)
    k_std = (torch.rand(shape, generator=gen) + 0.3) * torch.where(outlier, 2.0, 1.0)
    walk = torch.randn(HEADS, tokens + window, HEAD_DIM, generator=gen).cumsum(dim=1)
    smooth = (walk[:, window:] - walk[:, :-window]) / math.sqrt(window)
    keys = k_mean + k_std * (0.8 * smooth + 0.6 * torch.randn(smooth.shape, generator=gen))
    depth = 0.05 + 1.5 * layer / (LAYERS - 1)
    v_scale = depth * torch.exp(0.5 * torch.randn(HEADS, tokens, 1, generator=gen))
    values = 0.2 * depth * torch.randn(shape, generator=gen) + v_scale * torch.randn(
        HEADS, tokens, HEAD_DIM, generator=gen)
    kv = torch.cat([keys, values], dim=-1).reshape(HEADS, blocks, BLOCK, 2 * HEAD_DIM)
    return kv.permute(1, 0, 2, 3).contiguous().to(dtype)


def load_layers(args: argparse.Namespace) -> tuple[list[torch.Tensor], str]:
    if args.kv_file:
        layers = torch.load(args.kv_file, map_location="cpu")
        if not isinstance(layers, list | tuple) or not all(
                isinstance(t, torch.Tensor) for t in layers):
            raise SystemExit(f"{args.kv_file}: expected a torch.save'd list of tensors")
        if args.dtype:
            layers = [t.to(DTYPES[args.dtype]) for t in layers]
        return [t.contiguous() for t in layers], f"REAL KV from {args.kv_file}"
    blocks = -(-args.tokens // BLOCK)
    dtype = DTYPES[args.dtype or "float32"]
    layers = [synthetic_layer(blocks, layer, dtype) for layer in range(LAYERS)]
    return layers, f"SYNTHETIC KV-like data, {args.tokens} tokens"


@dataclass
class Row:
    name: str
    ratio: float
    encode_gbps: float
    decode_gbps: float
    max_abs: float
    mean_rel: float
    rel_l2: float


def measure(name: str, layers: list[torch.Tensor], repeats: int) -> Row:
    codec = get_codec(name)
    raw = sum(t.numel() * t.element_size() for t in layers)
    encode_s = decode_s = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        payloads = [codec.encode(t) for t in layers]
        encode_s = min(encode_s, time.perf_counter() - start)
    received = [bytearray(p) for p in payloads]  # what the receiver would hold
    for _ in range(repeats):
        start = time.perf_counter()
        decoded = [codec.decode(p, t.dtype, tuple(t.shape))
                   for p, t in zip(received, layers, strict=True)]
        decode_s = min(decode_s, time.perf_counter() - start)
    max_abs = abs_sum = ref_sum = err_sq = ref_sq = 0.0
    for x, y in zip(layers, decoded, strict=True):
        err = (y.double() - x.double()).abs()
        max_abs = max(max_abs, err.max().item() if err.numel() else 0.0)
        abs_sum += err.sum().item()
        ref_sum += x.double().abs().sum().item()
        err_sq += err.square().sum().item()
        ref_sq += x.double().square().sum().item()
    return Row(name, raw / max(1, sum(len(p) for p in payloads)), raw / encode_s / 1e9,
               raw / decode_s / 1e9, max_abs, abs_sum / max(ref_sum, 1e-300),
               math.sqrt(err_sq / max(ref_sq, 1e-300)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kv-file", help="torch.save'd list of real KV layer tensors")
    parser.add_argument("--tokens", type=int, default=4096, help="synthetic prompt length")
    parser.add_argument("--dtype", choices=sorted(DTYPES),
                        help="cast the KV to this dtype (synthetic default: float32)")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated names")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers, source = load_layers(args)
    raw = sum(t.numel() * t.element_size() for t in layers)
    print(f"{source}: {len(layers)} layers x {list(layers[0].shape)} {layers[0].dtype}, "
          f"{raw / 1e6:.1f} MB; {args.threads} torch thread(s), best of {args.repeats}")
    print(f"{'codec':<13} {'id':>2} {'ratio':>6} {'enc GB/s':>9} {'dec GB/s':>9} "
          f"{'max abs err':>11} {'mean rel err':>12} {'rel L2':>9}")
    for name in args.codecs.split(","):
        row = measure(name, layers, args.repeats)
        print(f"{row.name:<13} {get_codec(name).codec_id:>2} {row.ratio:>6.3f} "
              f"{row.encode_gbps:>9.2f} {row.decode_gbps:>9.2f} {row.max_abs:>11.3g} "
              f"{row.mean_rel:>12.3g} {row.rel_l2:>9.3g}")


if __name__ == "__main__":
    main()
