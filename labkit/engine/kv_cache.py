"""The KV cache: one preallocated pool of pages, handed out to requests a page at a time.

Why pages and not one slot of max_model_len per request: a request holds only what it has used (rounded
up to a page), so short chat requests do not each reserve the whole context, and when memory runs out
the scheduler can preempt one request instead of refusing everyone. Why this layout
([layers][pages, kv_heads, page_size, head_dim]): decode attention runs over the whole pool at once
(see attention.py), reading pages in place, so no per-step gather of a request's pages is needed.

Pages are given out lowest index first, which keeps the used pages packed at the start of the pool: decode
attention only reads pages below the highest one in use.
"""
from __future__ import annotations

import heapq
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
    def __init__(self, shape: KVShape, num_tokens: int, page_size: int, device: torch.device | str = "cpu"):
        if page_size < 1 or num_tokens < page_size:
            raise ValueError(f"The KV cache needs at least one page: {num_tokens} tokens with pages of {page_size}.")
        self.shape = shape
        self.page_size = page_size
        self.num_pages = num_tokens // page_size
        dims = (self.num_pages, shape.num_kv_heads, page_size, shape.head_dim)
        # Zeros, not empty: attention reads whole pages, and masked positions must hold finite numbers.
        self.keys = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self.values = [torch.zeros(dims, dtype=shape.dtype, device=device) for _ in range(shape.num_layers)]
        self._free = list(range(self.num_pages))  # a min-heap: the lowest free page goes first
        self.page_tables: dict[str, list[int]] = {}
        self.num_tokens_stored: dict[str, int] = {}  # tokens each request has asked room for

    # ---- sizes ----
    @property
    def capacity_tokens(self) -> int:
        return self.num_pages * self.page_size

    @property
    def memory_bytes(self) -> int:
        return self.capacity_tokens * self.shape.bytes_per_token

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    @property
    def num_used_pages(self) -> int:
        return self.num_pages - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of pages held by requests (vLLM's kv_cache_usage_perc, as a fraction)."""
        return self.num_used_pages / self.num_pages

    @property
    def utilisation(self) -> float:
        """Fraction of held page memory filled by tokens: what rounding up to whole pages costs."""
        held = self.num_used_pages * self.page_size
        return sum(self.num_tokens_stored.values()) / held if held else 1.0

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    # ---- handing out pages ----
    def reserve(self, request_id: str, num_tokens: int) -> bool:
        """Make sure `request_id` holds pages for `num_tokens` tokens. False (and no change) if too few are free."""
        table = self.page_tables.setdefault(request_id, [])
        missing = self.pages_for(num_tokens) - len(table)
        if missing > len(self._free):
            if not table:
                del self.page_tables[request_id]
            return False
        for _ in range(missing):
            table.append(heapq.heappop(self._free))
        self.num_tokens_stored[request_id] = max(num_tokens, self.num_tokens_stored.get(request_id, 0))
        return True

    def free(self, request_id: str) -> None:
        """Give a request's pages back at once (finished, aborted or preempted)."""
        for page in self.page_tables.pop(request_id, ()):
            heapq.heappush(self._free, page)
        self.num_tokens_stored.pop(request_id, None)

    def stats(self) -> dict:
        return {"kv_pages_total": self.num_pages, "kv_pages_used": self.num_used_pages, "kv_usage": self.usage,
                "kv_utilisation": self.utilisation, "kv_capacity_tokens": self.capacity_tokens,
                "kv_memory_bytes": self.memory_bytes, "kv_page_size": self.page_size}
