"""Block-granular copies between a paged KV tensor and contiguous block tensors.

A paged layer cache is indexed by block along ``block_dim`` (0 for vLLM's CPU layout
``[num_blocks, num_kv_heads, block_size, 2 * head_dim]``). ``gather_blocks`` returns a new
contiguous tensor the caller owns, so the engine may reuse the blocks at once.
"""

from __future__ import annotations

import torch


def _index(block_ids: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(block_ids, dtype=torch.long, device=device)


def gather_blocks(layer_cache: torch.Tensor, block_ids: list[int], block_dim: int = 0
                  ) -> torch.Tensor:
    return layer_cache.index_select(block_dim, _index(block_ids, layer_cache.device))


def scatter_blocks(layer_cache: torch.Tensor, block_ids: list[int], blocks: torch.Tensor,
                   block_dim: int = 0) -> None:
    expected = list(layer_cache.shape)
    expected[block_dim] = len(block_ids)
    if list(blocks.shape) != expected:
        raise ValueError(f"blocks of shape {tuple(blocks.shape)} do not fit a cache of shape "
                         f"{tuple(layer_cache.shape)} at {len(block_ids)} blocks")
    if blocks.dtype != layer_cache.dtype:
        raise ValueError(f"blocks are {blocks.dtype}, the cache holds {layer_cache.dtype}")
    layer_cache.index_copy_(block_dim, _index(block_ids, layer_cache.device),
                            blocks.to(layer_cache.device))
