"""Lossy KV codecs: 8-bit codes plus float32 scales, decoded back to the frame's dtype.

Both codecs take float32, bfloat16 or float16 tensors whose last dim is K and V concatenated
(vLLM's CPU layout ``[blocks, kv_heads, block_size, 2 * head_dim]``), so the last dim must be
even; anything else raises ``ValueError``, as do non-finite values (a NaN or inf in KV would
poison every value of its quantization group; the sender then fails the transfer and decode
recomputes). Metadata is float32: exact for any float32 range, no underflow for tiny groups.

Payload = float32 metadata arrays, then one byte per element; its length follows from the
frame's shape, and decoders reject any other length with ``ValueError``. All arithmetic is
float32 whatever the input dtype; decoding ends with one rounding to the output dtype, whose
half-ulp (2^-24 f32, 2^-8 bf16, 2^-11 f16 relative) adds to the bounds stated per codec.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
_TINY = 1e-30  # scale floor: an all-zero group encodes as zeros, not 0/0
# float32 value of each of the 256 e4m3fn codes (read-only): a table lookup decodes ~3x faster
# than torch's scalar float8 -> float32 conversion on CPU (bit-identical, NaN codes included).
_FP8_VALUES = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
_FP8_VALUES.setflags(write=False)


def _kv_split(dtype: torch.dtype, shape: tuple[int, ...], min_dims: int) -> int:
    """Half the last dim (head_dim), after checking the codec can take this tensor."""
    if dtype not in FLOAT_DTYPES:
        raise ValueError(f"lossy codecs take float32/bfloat16/float16, not {dtype}")
    if len(shape) < min_dims:
        raise ValueError(f"lossy codec needs >= {min_dims} dims, got shape {shape}")
    if shape[-1] % 2:
        raise ValueError(f"last dim {shape[-1]} is odd: not K and V halves; use a "
                         "lossless codec")
    return shape[-1] // 2


def _check_finite(*scales: torch.Tensor) -> None:
    for scale in scales:
        if not bool(torch.isfinite(scale).all()):
            raise ValueError("tensor holds NaN or inf (or a range overflowing float32); "
                             "use a lossless codec")


def _payload_view(payload: bytearray | memoryview, expected: int) -> torch.Tensor:
    if len(payload) != expected:
        raise ValueError(f"payload is {len(payload)} bytes, shape needs {expected}")
    if expected == 0:  # torch.frombuffer refuses empty buffers
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(payload, dtype=torch.uint8)


def _as_bytes(buffer: torch.Tensor) -> memoryview:
    return memoryview(buffer.numpy()).cast("B")


class Fp8Codec:
    """float8_e4m3fn codes with one float32 scale per (token, K or V half): groups of
    head_dim values along the last dim, scale = group amax / 448.

    Bound (asserted in tests/transfer/test_codecs.py, all dtypes): per element
    ``|x' - x| <= 2^-4 * |x| + 2^-10 * scale`` (+ output rounding), i.e. at most half an
    e4m3 ulp (3 mantissa bits) for normal codes, half the subnormal step below 2^-6 * scale;
    overall never more than 2^-4 of the group amax. Measured on real SmolLM2 KV (float32
    and bfloat16): mean |x' - x| / mean |x| = 2.0%, relative L2 error 2.2%. Payload: 4 bytes
    per group + 1 per element (3.76x smaller than float32 for head_dim 64, 1.88x than
    bfloat16).
    """

    codec_id = 3
    name = "fp8"
    lossless = False
    views_payload = False

    @staticmethod
    def payload_size(shape: tuple[int, ...]) -> int:
        numel = math.prod(shape)
        return 0 if numel == 0 else 4 * (2 * numel // shape[-1]) + numel

    def encode(self, tensor: torch.Tensor) -> memoryview:
        shape = tuple(tensor.shape)
        group = _kv_split(tensor.dtype, shape, 1)
        out = torch.empty(self.payload_size(shape), dtype=torch.uint8)
        if out.numel() == 0:
            return _as_bytes(out)
        x = tensor.detach().cpu().contiguous().reshape(-1, group).float()
        groups = x.shape[0]
        scale = out[: 4 * groups].view(torch.float32)
        torch.amax(x.abs(), dim=1, out=scale)
        _check_finite(scale)
        scale.clamp_(min=_TINY).div_(FP8_MAX)
        codes = out[4 * groups:].view(torch.float8_e4m3fn).view(groups, group)
        torch.div(x, scale[:, None], out=codes)  # e4m3fn conversion saturates at 448
        return _as_bytes(out)

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        group = _kv_split(dtype, shape, 1)
        buf = _payload_view(payload, self.payload_size(shape))
        if buf.numel() == 0:
            return torch.empty(shape, dtype=dtype)
        groups = math.prod(shape) // group
        scale = buf[: 4 * groups].view(torch.float32)
        values = torch.empty((groups, group), dtype=torch.float32)
        codes = buf[4 * groups:].numpy().reshape(groups, group)
        # mode="clip" is a no-op for 0..255 codes; the default "raise" buffers `out` (2x slower)
        np.take(_FP8_VALUES, codes, out=values.numpy(), mode="clip")
        if dtype is torch.float32:
            return values.mul_(scale[:, None]).view(shape)
        return torch.mul(values, scale[:, None]).to(dtype).view(shape)


class Int8Codec:
    """KIVI-style 8-bit: keys quantized per channel (one range per block, head and channel,
    over the block's tokens), values per token (one range per block, head and token, over
    head_dim). Asymmetric: code = round((x - min) / s), s = (max - min) / 255, both float32.

    Why asymmetric: post-RoPE key channels carry large offsets (real SmolLM2 KV: channel
    means up to 12 with std ~1): a range centred on 0 can leave most codes unused. Measured
    on real SmolLM2 float32 KV (relative L2 error, symmetric -> asymmetric): keys 0.44% ->
    0.31%, values 0.73% -> 0.60%, for 4% more payload.

    Bound (asserted in tests, all dtypes): per element ``|x' - x| <= s / 2 = (max - min) /
    510`` of its group (+ float32 arithmetic and output rounding). Measured on real SmolLM2
    float32 KV: mean |x' - x| / mean |x| = 0.45%, relative L2 error 0.37%. Payload for
    ``[..., T, 2 * d]``: per leading index 8 * d bytes of key ranges and 8 * T of value
    ranges, then 1 byte per element (3.66x smaller than float32 for d=64, T=128; 1.83x than
    bfloat16). Needs >= 2 dims (tokens, then channels).
    """

    codec_id = 4
    name = "int8"
    lossless = False
    views_payload = False

    @staticmethod
    def _layout(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(rows, tokens, head_dim, payload bytes) for a [..., tokens, 2 * head_dim] shape."""
        rows, tokens, half = math.prod(shape[:-2]), shape[-2], shape[-1] // 2
        numel = rows * tokens * 2 * half
        size = 0 if numel == 0 else 8 * rows * (half + tokens) + numel
        return rows, tokens, half, size

    def encode(self, tensor: torch.Tensor) -> memoryview:
        shape = tuple(tensor.shape)
        _kv_split(tensor.dtype, shape, 2)
        rows, tokens, half, size = self._layout(shape)
        out = torch.empty(size, dtype=torch.uint8)
        if size == 0:
            return _as_bytes(out)
        x = tensor.detach().cpu().contiguous().reshape(rows, tokens, 2 * half).float()
        keys, values = x[..., :half], x[..., half:]
        meta_len = 8 * rows * (half + tokens)
        meta = out[:meta_len].view(torch.float32)
        k_lo, k_step, v_lo, v_step = meta.split([rows * half] * 2 + [rows * tokens] * 2)
        k_lo, k_step = k_lo.view(rows, 1, half), k_step.view(rows, 1, half)
        v_lo, v_step = v_lo.view(rows, tokens, 1), v_step.view(rows, tokens, 1)
        torch.aminmax(keys, dim=1, keepdim=True, out=(k_lo, k_step))
        torch.aminmax(values, dim=2, keepdim=True, out=(v_lo, v_step))
        for lo, step in ((k_lo, k_step), (v_lo, v_step)):
            step.sub_(lo).div_(255.0)
            _check_finite(step)
            step.clamp_(min=_TINY)
        codes = out[meta_len:].view(rows, tokens, 2 * half)
        codes[..., :half] = keys.sub(k_lo).div_(k_step).round_()  # exact in [0, 255]
        codes[..., half:] = values.sub(v_lo).div_(v_step).round_()
        return _as_bytes(out)

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        _kv_split(dtype, shape, 2)
        rows, tokens, half, size = self._layout(shape)
        buf = _payload_view(payload, size)
        if size == 0:
            return torch.empty(shape, dtype=dtype)
        meta_len = 8 * rows * (half + tokens)
        meta = buf[:meta_len].view(torch.float32)
        k_lo, k_step, v_lo, v_step = meta.split([rows * half] * 2 + [rows * tokens] * 2)
        codes = buf[meta_len:].view(rows, tokens, 2 * half)
        out = torch.empty((rows, tokens, 2 * half), dtype=dtype)
        torch.addcmul(k_lo.view(rows, 1, half), codes[..., :half].float(),
                      k_step.view(rows, 1, half), out=out[..., :half])
        torch.addcmul(v_lo.view(rows, tokens, 1), codes[..., half:].float(),
                      v_step.view(rows, tokens, 1), out=out[..., half:])
        return out.view(shape)
