"""Attention over the paged KV cache, plugged into any Hugging Face decoder through `AttentionInterface`.

The model runs one forward per step over a packed batch: every scheduled token of every request side by
side in a single row (batch 1, no padding). Each attention layer calls `paged_attention` with that row's
queries, keys and values (after rotary embeddings); it writes the new keys and values into the cache pages
and attends per request:

* decode tokens (one per request) attend over the whole page pool at once. Every page below the highest page
  in use gets its owner's query; a page's scores are masked where it holds no token of that owner. A softmax
  split over pages (each page's max and sum, then combined per request, as in flash-decoding) gives exact
  attention without copying any request's pages together: the work is proportional to the pages in use.
  A page shared by several decodes (a cached prefix) is read in place for one of them and gathered once
  for each other one: only shared pages are copied.
* prefill chunks attend with SDPA: a prompt's first chunk over its own fresh keys (causal), a later chunk
  over its pages gathered from the cache (only long, chunked prompts pay for that copy).

Models that never call the interface (or calls outside an engine step) fall back to plain SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from .kv_cache import KVShape, PagedKVCache

ATTENTION_NAME = "labkit_paged"


@dataclass
class PrefillChunk:
    start: int  # its first token's index in the packed row
    end: int
    context_pages: torch.Tensor | None = None  # the request's pages, when earlier tokens are already cached
    mask: torch.Tensor | None = None  # [chunk, context] causal mask for a chunk that continues a prompt
    context_len: int = 0


@dataclass
class AttentionBatch:
    """Everything the layers need to know about this step's packed row; built once per step, read by every layer."""

    write_pages: torch.Tensor  # [tokens] page of each token's key/value
    write_offsets: torch.Tensor  # [tokens] offset inside that page
    num_decode: int  # the row starts with this many single-token decodes, one per request
    num_pool_pages: int = 0  # decode attention reads pages [0, num_pool_pages) in place
    extra_pages: torch.Tensor | None = None  # pages shared by several decodes: read again for each other one
    page_owner: torch.Tensor | None = None  # [pool pages + extra] which decode row each slot belongs to (0 if none)
    owner_index: torch.Tensor | None = None  # page_owner expanded for scatter_reduce
    page_bias: torch.Tensor | None = None  # [pool pages, 1, 1, page_size] 0 where the owner has a token, else -inf
    page_owner_matrix: torch.Tensor | None = None  # [decodes, pool pages] float32, 1 where the decode owns the page
    prefills: tuple[PrefillChunk, ...] = ()


class PagedAttention:
    """Holds the cache and the current step's batch; the layers of one model find it on their modules."""

    def __init__(self, cache: PagedKVCache, num_heads: int):
        self.cache = cache
        self.num_heads = num_heads
        self.num_kv_heads = cache.shape.num_kv_heads
        self.groups = num_heads // self.num_kv_heads
        self.layer_of: dict[int, int] = {}  # id(attention module) -> layer index, in call order
        self.batch: AttentionBatch | None = None

    def attend(self, module, query, key, value, scaling: float | None) -> torch.Tensor:
        layer = self.layer_of[id(module)]
        batch = self.batch
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        new_keys, new_values = key[0], value[0]  # [kv_heads, tokens, head_dim]
        keys[batch.write_pages, :, batch.write_offsets] = new_keys.transpose(0, 1)
        values[batch.write_pages, :, batch.write_offsets] = new_values.transpose(0, 1)
        q = query[0]  # [heads, tokens, head_dim]
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        if not batch.prefills:  # steady state: decodes only
            return self._decode(q, keys, values, scale).unsqueeze(0)
        out = q.new_empty(q.shape[1], q.shape[0], q.shape[2])  # [tokens, heads, head_dim]
        if batch.num_decode:
            out[:batch.num_decode] = self._decode(q[:, :batch.num_decode], keys, values, scale)
        for chunk in batch.prefills:
            out[chunk.start:chunk.end] = self._prefill(chunk, q, new_keys, new_values, keys, values, scale)
        return out.unsqueeze(0)

    def _decode(self, q, keys, values, scale: float) -> torch.Tensor:
        batch, n = self.batch, self.batch.num_decode
        pool = batch.num_pool_pages
        head_dim = q.shape[-1]
        # [heads, n, d] -> [n, kv_heads, groups, d]: the queries sharing a kv head sit together (GQA).
        # Scaling the few queries costs less than scaling the many scores.
        q = (q * scale).reshape(self.num_kv_heads, self.groups, n, head_dim).permute(2, 0, 1, 3)
        page_q = q.index_select(0, batch.page_owner)  # [slots, kv_heads, groups, d]
        scores = torch.matmul(page_q[:pool], keys[:pool].transpose(-1, -2))  # [pool, kv_heads, groups, page]
        extra = batch.extra_pages
        if extra is not None:  # prefix-cache pages that other decodes share: only those are gathered
            extra_scores = torch.matmul(page_q[pool:], keys.index_select(0, extra).transpose(-1, -2))
            scores = torch.cat((scores, extra_scores))
        slots = scores.shape[0]
        scores = torch.add(scores, batch.page_bias)  # masks, and promotes to float32 in the same pass
        page_max = scores.amax(-1, keepdim=True)
        row_max = scores.new_full((n, self.num_kv_heads, self.groups, 1), float("-inf"))
        row_max.scatter_reduce_(0, batch.owner_index, page_max, "amax")
        probs = scores.sub_(row_max.index_select(0, batch.page_owner)).exp_()
        # Sum the pages of each request with one matmul by the [requests, pages] ownership matrix
        # (index_add_ over pages is a slow scatter on CPU).
        owners = batch.page_owner_matrix
        denominator = owners @ probs.sum(-1).view(slots, -1)  # [n, kv_heads * groups]
        probs = probs.to(values.dtype)
        page_out = torch.matmul(probs[:pool], values[:pool])  # [pool, kv_heads, groups, d]
        if extra is not None:
            page_out = torch.cat((page_out, torch.matmul(probs[pool:], values.index_select(0, extra))))
        out = owners @ page_out.view(slots, -1).float()  # [n, kv_heads * groups * d]
        out = out.view(n, -1, head_dim).div_(denominator.unsqueeze(-1))
        return out.to(q.dtype)

    def _prefill(self, chunk: PrefillChunk, q, new_keys, new_values, keys, values, scale: float) -> torch.Tensor:
        queries = q[:, chunk.start:chunk.end].unsqueeze(0)  # [1, heads, chunk, d]
        if chunk.context_pages is None:  # the chunk is the whole context so far: attend to its own keys
            k = new_keys[:, chunk.start:chunk.end].unsqueeze(0)
            v = new_values[:, chunk.start:chunk.end].unsqueeze(0)
            out = F.scaled_dot_product_attention(queries, k, v, is_causal=True, scale=scale,
                                                 enable_gqa=self.groups > 1)
        else:
            k = self._gather(keys, chunk)
            v = self._gather(values, chunk)
            out = F.scaled_dot_product_attention(queries, k, v, attn_mask=chunk.mask, scale=scale,
                                                 enable_gqa=self.groups > 1)
        return out[0].transpose(0, 1)  # [chunk, heads, d]

    def _gather(self, pool: torch.Tensor, chunk: PrefillChunk) -> torch.Tensor:
        pages = pool.index_select(0, chunk.context_pages)  # [pages, kv_heads, page, d]
        kv_heads, head_dim = pages.shape[1], pages.shape[3]
        flat = pages.transpose(0, 1).reshape(kv_heads, -1, head_dim)[:, :chunk.context_len]
        return flat.unsqueeze(0)


def paged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The function registered as `labkit_paged`: the engine's attention during a step, SDPA otherwise."""
    attention = getattr(module, "_labkit_attention", None)
    if attention is None or attention.batch is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    return attention.attend(module, query, key, value, scaling), None


def register() -> None:
    """Make `attn_implementation="labkit_paged"` known to transformers (idempotent). Outside engine steps it
    behaves as SDPA, with SDPA's masks, so `model.generate` still works on a model an engine is attached to."""
    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, sdpa_mask)


def probe_kv_shape(model, input_ids: torch.Tensor) -> tuple[KVShape, int, list]:
    """Run one tiny forward and watch the attention calls: how many layers, KV heads, head size, query heads,
    and which modules are the attention layers (in call order)."""
    seen: list = []

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append((module, query.shape[1], key.shape[1], key.shape[-1], key.dtype))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("labkit_probe", spy)
    ALL_MASK_ATTENTION_FUNCTIONS.register("labkit_probe", sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation("labkit_probe")
    try:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
    finally:
        model.set_attn_implementation(previous)
    if not seen:
        raise TypeError(f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
                        "so the engine cannot drive it.")
    _, num_heads, num_kv_heads, head_dim, dtype = seen[0]
    shape = KVShape(num_layers=len(seen), num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype)
    return shape, num_heads, [module for module, *_ in seen]
