"""The KV cache's memory: one preallocated pool of pages of keys and values per layer.

Why pages and not one slot of max_model_len per request: a request holds only what it has used (rounded
up to a page), so short chat requests do not each reserve the whole context, and when memory runs out
the scheduler can preempt one request instead of refusing everyone. Why this layout
([layers][pages, page_size, kv_heads, head_dim]): a token's keys for all heads are one row, written with one
row copy, and a request's pages gathered side by side are its context in order (see attention.py).

This holds tensors only; which request holds which page is the block manager's (block_manager.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVShape:
    """What one token's keys and values look like in a given model: found by a probe forward pass."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * element


class PagedKVCache:
    def __init__(self, shape: KVShape, num_tokens: int, page_size: int, device: torch.device | str = "cpu",
                 scratch_pages: int = 0):
        """`scratch_pages` more pages follow the `num_pages` requests can hold, never handed out: where the
        padding rows of a CUDA graph's batch write (pages num_pages, num_pages + 1, ...)."""
        if page_size < 1 or num_tokens < page_size:
            raise ValueError(f"The KV cache needs at least one page: {num_tokens} tokens with pages of {page_size}.")
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_tokens // page_size
        dims = (self.num_pages + scratch_pages, page_size, shape.num_kv_heads, shape.head_dim)
        # Zeros, not empty: attention reads whole pages, and masked positions must hold finite numbers (0 x NaN
        # would poison a softmax).
        self.keys = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]

    @property
    def capacity_tokens(self) -> int:
        return self.num_pages * self.page_size

    @property
    def memory_bytes(self) -> int:
        return self.capacity_tokens * self.shape.bytes_per_token

    def stats(self) -> dict:
        return {"kv_capacity_tokens": self.capacity_tokens, "kv_memory_bytes": self.memory_bytes,
                "kv_page_size": self.page_size}
