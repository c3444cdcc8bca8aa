"""KV codecs: how a block tensor becomes payload bytes and back.

Every codec has a wire id, a name and two operations. ``encode`` returns a bytes-like object
(the raw codec returns a zero-copy view of the tensor's memory); ``decode`` rebuilds a tensor
of the frame's dtype and shape from the received payload (the raw codec wraps the receive
buffer without copying). Lossless codecs (byte-plane shuffle + zstd or lz4) live in
``transfer.lossless``, lossy ones (fp8, KIVI-style int8) in ``transfer.lossy``; all are
registered below. Codec ids are wire format: never renumber or reuse one.

| id | name | lossless | payload |
|---|---|---|---|
| 0 | raw | yes | the tensor's bytes |
| 1 | lossless | yes | byte-plane shuffle + zstd level 1 |
| 2 | lossless-lz4 | yes | byte-plane shuffle + lz4 block |
| 3 | fp8 | no | float8_e4m3fn + a float32 scale per token per K/V half |
| 4 | int8 | no | 8-bit asymmetric, keys per channel, values per token |
"""

from __future__ import annotations

from typing import Protocol

import torch

from transfer.lossless import ShuffleLz4Codec, ShuffleZstdCodec
from transfer.lossy import Fp8Codec, Int8Codec


class Codec(Protocol):
    codec_id: int
    name: str
    lossless: bool
    views_payload: bool  # decode returns a view of the payload buffer (else a new tensor)

    def encode(self, tensor: torch.Tensor) -> memoryview | bytes: ...

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor: ...


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A zero-copy byte view of a CPU tensor (made contiguous first if it is not)."""
    flat = tensor.detach().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


class RawCodec:
    """The tensor's bytes as they lie in memory."""

    codec_id = 0
    name = "raw"
    lossless = True
    views_payload = True  # decode wraps the receive buffer; it stays held until installed

    def encode(self, tensor: torch.Tensor) -> memoryview:
        return tensor_bytes(tensor.cpu())

    def decode(
        self, payload: bytearray | memoryview, dtype: torch.dtype, shape: tuple[int, ...]
    ) -> torch.Tensor:
        expected = _numel(shape) * torch.empty((), dtype=dtype).element_size()
        if len(payload) != expected:
            raise ValueError(f"raw payload is {len(payload)} bytes, shape needs {expected}")
        if expected == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(payload, dtype=torch.uint8).view(dtype).reshape(shape)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (RawCodec(), ShuffleZstdCodec(), ShuffleLz4Codec(), Fp8Codec(), Int8Codec())
}
CODECS_BY_ID: dict[int, Codec] = {codec.codec_id: codec for codec in CODECS.values()}


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {sorted(CODECS)}") from None
