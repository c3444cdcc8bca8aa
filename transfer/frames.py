"""KV wire frames: a fixed 88-byte header followed by a payload.

A frame carries one layer's KV for a contiguous range of a request's blocks (``DATA``), or
closes a transfer (``END``, payload = JSON with the number of data frames sent) or cancels it
(``ABORT``, payload = JSON with the reason). The header names the transfer, layer, block range,
codec, dtype and shape, the raw and payload lengths, an xxh3-64 checksum of the payload, and an
xxh32 checksum of the header itself so a corrupted length is caught before it is trusted.
"""

from __future__ import annotations

import enum
import json
import struct
import uuid
from dataclasses import dataclass

import torch
import xxhash

MAGIC = b"PKV1"
MAX_DIMS = 6
# magic, kind, codec, dtype, ndim, transfer id, layer, pad, block_start, num_blocks,
# shape[6], raw_len, payload_len, payload checksum, header checksum
_HEADER = struct.Struct("<4sBBBB16sHHII6IQQQI")
HEADER_SIZE = _HEADER.size
_HEADER_BODY = HEADER_SIZE - 4


class FrameKind(enum.IntEnum):
    DATA = 1
    END = 2
    ABORT = 3


DTYPE_CODES: dict[torch.dtype, int] = {
    torch.bfloat16: 1,
    torch.float16: 2,
    torch.float32: 3,
    torch.uint8: 4,
    torch.int8: 5,
    torch.float8_e4m3fn: 6,
}
DTYPES_BY_CODE: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}


class FrameError(ValueError):
    """A frame that cannot be trusted: bad magic, header checksum, limits or payload checksum."""


def new_transfer_id() -> str:
    """A fresh transfer id: 32 lowercase hex digits (16 bytes on the wire)."""
    return uuid.uuid4().hex


def transfer_id_bytes(transfer_id: str) -> bytes:
    try:
        raw = bytes.fromhex(transfer_id)
    except ValueError as exc:
        raise FrameError(f"transfer id {transfer_id!r} is not hex") from exc
    if len(raw) != 16:
        raise FrameError(f"transfer id {transfer_id!r} must be 32 hex digits")
    return raw


def payload_checksum(payload: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(payload)


@dataclass(frozen=True, slots=True)
class FrameHeader:
    kind: FrameKind
    transfer_id: str
    layer: int = 0
    block_start: int = 0
    num_blocks: int = 0
    codec: int = 0
    dtype: int = 0
    shape: tuple[int, ...] = ()
    raw_len: int = 0
    payload_len: int = 0
    checksum: int = 0

    def pack(self) -> bytes:
        if len(self.shape) > MAX_DIMS:
            raise FrameError(f"shape {self.shape} has more than {MAX_DIMS} dims")
        shape = tuple(self.shape) + (0,) * (MAX_DIMS - len(self.shape))
        body = _HEADER.pack(
            MAGIC, int(self.kind), self.codec, self.dtype, len(self.shape),
            transfer_id_bytes(self.transfer_id), self.layer, 0, self.block_start,
            self.num_blocks, *shape, self.raw_len, self.payload_len, self.checksum, 0,
        )
        return body[:_HEADER_BODY] + struct.pack("<I", xxhash.xxh32_intdigest(body[:_HEADER_BODY]))

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview, max_payload: int) -> FrameHeader:
        if len(data) != HEADER_SIZE:
            raise FrameError(f"header is {len(data)} bytes, expected {HEADER_SIZE}")
        fields = _HEADER.unpack(data)
        magic, kind, codec, dtype, ndim, tid, layer, _pad, start, count = fields[:10]
        shape = fields[10:16]
        raw_len, payload_len, checksum, header_sum = fields[16:]
        if magic != MAGIC:
            raise FrameError(f"bad magic {magic!r}")
        if xxhash.xxh32_intdigest(bytes(data[:_HEADER_BODY])) != header_sum:
            raise FrameError("header checksum mismatch")
        if kind not in FrameKind._value2member_map_ or ndim > MAX_DIMS:
            raise FrameError(f"bad frame kind {kind} or ndim {ndim}")
        if payload_len > max_payload:
            raise FrameError(f"payload of {payload_len} bytes exceeds the {max_payload} limit")
        return cls(
            kind=FrameKind(kind), transfer_id=tid.hex(), layer=layer, block_start=start,
            num_blocks=count, codec=codec, dtype=dtype, shape=tuple(shape[:ndim]),
            raw_len=raw_len, payload_len=payload_len, checksum=checksum,
        )


def control_payload(info: dict) -> bytes:
    """Payload of an END or ABORT frame."""
    return json.dumps(info, separators=(",", ":")).encode()


def parse_control_payload(payload: bytes | bytearray | memoryview) -> dict:
    try:
        info = json.loads(bytes(payload))
    except ValueError as exc:
        raise FrameError("control frame payload is not JSON") from exc
    if not isinstance(info, dict):
        raise FrameError("control frame payload is not an object")
    return info
