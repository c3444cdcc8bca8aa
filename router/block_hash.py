"""Prefix block hashes, computed exactly as vLLM's prefix cache computes them.

vLLM 0.32.0 (``vllm/v1/core/kv_cache_utils.py``, default ``--prefix-caching-hash-algo
sha256``) hashes each *full* block of ``block_size`` tokens as
``sha256(pickle.dumps((parent_hash, tuple(token_ids), extra_keys), protocol=5))``, chained
from ``NONE_HASH = sha256(pickle.dumps(seed))`` where the seed is ``$PYTHONHASHSEED`` or
``"vllm-none-hash"``. For plain text requests ``extra_keys`` is ``None``. KV events carry the
low 64 bits of each hash as an unsigned int (``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the
default); ``event_key`` converts ours to that form. A test checks these against the hashes a
real vLLM server reports.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from functools import cache

DEFAULT_NONE_HASH_SEED = "vllm-none-hash"
PICKLE_PROTOCOL = 5
_LOW_64 = (1 << 64) - 1


def _sha256_pickle(obj: object) -> bytes:
    return hashlib.sha256(pickle.dumps(obj, protocol=PICKLE_PROTOCOL)).digest()


@cache
def none_hash(seed: str | None = None) -> bytes:
    """The parent hash of a prompt's first block."""
    if seed is None:
        seed = os.environ.get("PYTHONHASHSEED", DEFAULT_NONE_HASH_SEED)
    return _sha256_pickle(seed)


def block_hashes(token_ids: list[int], block_size: int, seed: str | None = None) -> list[bytes]:
    """Chained 32-byte hashes of every full block of ``token_ids`` (a partial tail is not
    hashed, as in vLLM)."""
    parent = none_hash(seed)
    hashes: list[bytes] = []
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        block = tuple(int(t) for t in token_ids[start:start + block_size])
        parent = _sha256_pickle((parent, block, None))
        hashes.append(parent)
    return hashes


def event_key(block_hash: bytes) -> int:
    """The form vLLM's KV events use for a hash by default: its low 64 bits, unsigned."""
    return int.from_bytes(block_hash, "big") & _LOW_64
