"""Lossless KV codecs: byte-plane shuffle, then a fast general-purpose compressor.

A float's bytes differ in how predictable they are: the sign/exponent byte of a KV value
takes few distinct values, the low mantissa bytes look random. Grouping byte 0 of every value,
then byte 1, ... (a byte-plane shuffle) puts the predictable bytes next to each other, where
zstd or lz4 find them; the random planes stay incompressible but cost little. Decoding
reverses both steps and is bit-exact for every dtype, including NaN payloads and -0.0.

Payload: the compressed shuffled bytes, nothing else. The raw length is known from the
frame's dtype and shape, so decoders check the decompressed size against it and raise
``ValueError`` on anything malformed or truncated.
"""

from __future__ import annotations

import math

import lz4.block
import numpy as np
import torch
import zstandard

# Level 1 beats level 3 on KV in ratio *and* speed (real SmolLM2 KV, shuffled: float32 1.193x
# vs 1.178x at ~1.4x the speed, bfloat16 1.460x vs 1.414x); higher levels gain nothing.
ZSTD_LEVEL = 1


def raw_size(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def shuffle(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as [itemsize, numel] planes (plane k = byte k of every value)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    values = flat.view(torch.uint8).numpy().reshape(-1, flat.element_size())
    planes = np.empty((values.shape[1], values.shape[0]), dtype=np.uint8)
    for byte in range(values.shape[1]):  # per byte plane (<= 8), not per element
        planes[byte] = values[:, byte]  # a strided column copy beats transpose 2x here
    return planes


def unshuffle(planes: np.ndarray, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of ``shuffle``: [itemsize, numel] planes back to a tensor of dtype and shape."""
    itemsize, count = planes.shape
    out = torch.empty(count * itemsize, dtype=torch.uint8)
    values = out.numpy().reshape(count, itemsize)
    for byte in range(itemsize):
        values[:, byte] = planes[byte]
    return out.view(dtype).reshape(shape)


def _planes(data: bytes | bytearray | memoryview, dtype: torch.dtype,
            shape: tuple[int, ...]) -> np.ndarray:
    itemsize = torch.empty((), dtype=dtype).element_size()
    expected = raw_size(dtype, shape)
    if len(data) != expected:
        raise ValueError(f"decompressed {len(data)} bytes, shape needs {expected}")
    return np.frombuffer(data, dtype=np.uint8).reshape(itemsize, -1)


class ShuffleZstdCodec:
    """Byte-plane shuffle + zstd (level ``ZSTD_LEVEL``). Error bound: none, decode(encode(x))
    is x bit for bit for every dtype and shape (odd sizes, empty tensors, NaN/inf included;
    asserted in tests). Measured on real SmolLM2 KV, one core: 1.19x on float32, 1.46x on
    bfloat16 (random low mantissa bytes cap float32); encode ~0.6, decode ~1.2 GB/s of raw
    bytes, most of it spent on the sign/exponent byte plane."""

    codec_id = 1
    name = "lossless"
    lossless = True
    views_payload = False

    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        self.level = level

    def encode(self, tensor: torch.Tensor) -> bytes:
        # A compressor object is not thread-safe and sender threads share this codec, so
        # each call makes its own (cheap next to a layer's compression).
        return zstandard.ZstdCompressor(level=self.level).compress(shuffle(tensor))

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        expected = raw_size(dtype, shape)
        try:
            params = zstandard.get_frame_parameters(payload)
        except zstandard.ZstdError as exc:
            raise ValueError(f"not a zstd payload: {exc}") from exc
        if params.content_size != expected:
            raise ValueError(f"zstd frame holds {params.content_size} bytes, shape needs "
                             f"{expected}")
        try:
            data = zstandard.ZstdDecompressor().decompress(
                payload, max_output_size=expected, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise ValueError(f"corrupt zstd payload: {exc}") from exc
        return unshuffle(_planes(data, dtype, shape), dtype, shape)


class ShuffleLz4Codec:
    """Byte-plane shuffle + lz4 block (default mode, no stored size: the frame header's dtype
    and shape give it). Exact, like ``lossless``. Measured on real SmolLM2 KV, one core:
    1.08x on float32, 1.17x on bfloat16, encode ~0.75, decode ~1.4 GB/s: only slightly
    faster than zstd level 1 on this data, for a much lower ratio."""

    codec_id = 2
    name = "lossless-lz4"
    lossless = True
    views_payload = False

    def encode(self, tensor: torch.Tensor) -> bytes:
        planes = shuffle(tensor)
        if planes.size == 0:
            return b""
        return lz4.block.compress(planes, store_size=False)

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        expected = raw_size(dtype, shape)
        if expected == 0:
            if len(payload):
                raise ValueError(f"lz4 payload of {len(payload)} bytes for an empty tensor")
            return torch.empty(shape, dtype=dtype)
        try:
            data = lz4.block.decompress(payload, uncompressed_size=expected)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"corrupt lz4 payload: {exc}") from exc
        return unshuffle(_planes(data, dtype, shape), dtype, shape)
