"""Frames and the raw codec: exact round trips, and corruption caught before it is trusted."""

import pytest
import torch

from transfer.codecs import RawCodec, get_codec
from transfer.frames import (
    DTYPE_CODES,
    DTYPES_BY_CODE,
    HEADER_SIZE,
    FrameError,
    FrameHeader,
    FrameKind,
    new_transfer_id,
    payload_checksum,
)


def make_header(**overrides) -> FrameHeader:
    fields = dict(kind=FrameKind.DATA, transfer_id=new_transfer_id(), layer=7, block_start=3,
                  num_blocks=2, codec=0, dtype=1, shape=(2, 3, 128, 128), raw_len=10,
                  payload_len=10, checksum=1234)
    fields.update(overrides)
    return FrameHeader(**fields)


def test_header_round_trip():
    header = make_header()
    packed = header.pack()
    assert len(packed) == HEADER_SIZE
    assert FrameHeader.unpack(packed, max_payload=1 << 20) == header


def test_header_bit_flip_is_rejected():
    packed = bytearray(make_header().pack())
    packed[40] ^= 0x01  # inside block_start/num_blocks/shape
    with pytest.raises(FrameError, match="header checksum"):
        FrameHeader.unpack(packed, max_payload=1 << 20)


def test_oversized_payload_is_rejected_before_allocation():
    packed = make_header(payload_len=1 << 40).pack()
    with pytest.raises(FrameError, match="exceeds"):
        FrameHeader.unpack(packed, max_payload=1 << 30)


def test_bad_magic_and_transfer_id():
    packed = bytearray(make_header().pack())
    packed[0:4] = b"XXXX"
    with pytest.raises(FrameError, match="magic"):
        FrameHeader.unpack(packed, max_payload=1 << 20)
    with pytest.raises(FrameError):
        make_header(transfer_id="not-hex").pack()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int8])
def test_raw_codec_round_trip_is_exact(dtype):
    tensor = (torch.randn(3, 3, 128, 128) * 10).to(dtype)
    codec = RawCodec()
    payload = codec.encode(tensor)
    assert len(payload) == tensor.numel() * tensor.element_size()
    decoded = codec.decode(bytearray(payload), dtype, tuple(tensor.shape))
    assert torch.equal(decoded, tensor)
    assert DTYPES_BY_CODE[DTYPE_CODES[dtype]] is dtype


def test_raw_codec_rejects_wrong_length_and_unknown_codec():
    with pytest.raises(ValueError):
        RawCodec().decode(bytearray(10), torch.float32, (4,))
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("nope")


def test_checksum_detects_one_flipped_bit():
    data = bytearray(torch.randn(1000).numpy().tobytes())
    before = payload_checksum(data)
    data[500] ^= 0x10
    assert payload_checksum(data) != before
