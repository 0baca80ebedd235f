"""Attention over the paged KV cache, plugged into any Hugging Face decoder through `AttentionInterface`.

The model runs one forward per step over a packed batch: every scheduled token of every request side by
side in a single row (batch 1, no padding). Each attention layer hands its queries, keys and values (after
rotary embeddings) to `PagedAttention.attend_layer`, which writes the new keys and values into the cache
pages (one row copy per token) and attends per request:

* decode tokens (one per request) attend together, in one fused SDPA call: each request's pages are gathered
  into a batch padded to the longest, and a mask hides the padding and the unfilled end of the last page. The
  work is proportional to the pages each request holds; a page shared through the prefix cache is simply
  gathered for each request that reads it, and is never written.
  With labkit's CPU kernels (bf16 lean forward, engine/cpu_kernels.py) decodes instead read each request's
  pages in place, through its block table, in one call per layer: no gathered copy and no mask.
* prefill chunks attend with SDPA: a prompt's first chunk over its own fresh keys (causal), a later chunk
  (a long prompt, or one whose start came from the prefix cache) over its pages gathered from the cache.
  With labkit's CPU kernels every chunk of the step attends in one call per layer instead, each reading its
  context (its own keys included, written just before) from the cache through a list of slots.

Models that never call the interface (or calls outside an engine step) fall back to plain SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from ..errors import UnsupportedModel
from . import cpu_kernels
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

    write_slots: torch.Tensor  # [tokens] where each token's key and value go: page * page_size + offset
    num_decode: int  # the row starts with this many single-token decodes, one per request
    decode_pages: torch.Tensor | None = None  # [decodes * most pages] each decode's pages, padded with page 0
    decode_mask: torch.Tensor | None = None  # [decodes, 1, 1, most pages * page_size] 0 on a token, -inf elsewhere
    decode_table: torch.Tensor | None = None  # [decodes, most pages] for labkit's CPU kernel, instead of the two above
    decode_lengths: torch.Tensor | None = None  # [decodes] tokens each decode attends to (its new one included)
    prefills: tuple[PrefillChunk, ...] = ()
    prefill_table: tuple[torch.Tensor, torch.Tensor] | None = None  # cpu_kernels.prefill_attention's slots and chunks


def decode_mask(lengths: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask of decodes over contexts gathered `width` tokens wide: 0 on each row's first
    lengths[i] tokens, -inf past them; [rows, 1, 1, width], SDPA's layout."""
    hidden = torch.arange(width).unsqueeze(0) >= lengths.unsqueeze(1)
    return torch.zeros(hidden.shape, dtype=dtype).masked_fill_(hidden, float("-inf")).view(len(lengths), 1, 1, -1)


class PagedAttention:
    """Holds the cache and the current step's batch; the layers of one model find it on their modules."""

    def __init__(self, cache: PagedKVCache, num_heads: int):
        self.cache = cache
        self.num_heads = num_heads
        self.num_kv_heads = cache.shape.num_kv_heads
        self.groups = num_heads // self.num_kv_heads
        self.layer_of: dict[int, int] = {}  # id(attention module) -> layer index, in call order
        self.batch: AttentionBatch | None = None
        # decodes attend through cpu_kernels.decode_attention, prefills through prefill_attention where the head
        # size fits it (both set by the model runner)
        self.kernels = self.prefill_kernel = False

    def attend(self, module, query, key, value, scaling: float | None) -> torch.Tensor:
        """transformers' layout in and out: query [1, heads, tokens, d], key/value [1, kv_heads, tokens, d]."""
        q = query[0]
        scale = scaling if scaling is not None else q.shape[-1] ** -0.5
        out = self.attend_layer(self.layer_of[id(module)], q, key[0].transpose(0, 1), value[0].transpose(0, 1), scale)
        return out.unsqueeze(0)

    def attend_layer(self, layer: int, q, new_keys, new_values, scale: float) -> torch.Tensor:
        """q [heads, tokens, d], new keys/values [tokens, kv_heads, d] -> [tokens, heads, d]."""
        batch = self.batch
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # [pages, page_size, kv_heads, d]
        if self.kernels:
            cpu_kernels.write_kv(new_keys, new_values, batch.write_slots, keys, values)
        else:
            slots = keys.shape[0] * keys.shape[1]
            keys.view(slots, -1).index_copy_(0, batch.write_slots, new_keys.reshape(new_keys.shape[0], -1))
            values.view(slots, -1).index_copy_(0, batch.write_slots, new_values.reshape(new_values.shape[0], -1))
        if not batch.prefills:  # steady state: decodes only
            return self._decode(q, keys, values, scale)
        out = q.new_empty(q.shape[1], q.shape[0], q.shape[2])  # [tokens, heads, head_dim]
        if batch.num_decode:
            out[:batch.num_decode] = self._decode(q[:, :batch.num_decode], keys, values, scale)
        if self.prefill_kernel:
            slots, chunks = self._prefill_table(keys.shape[1])
            cpu_kernels.prefill_attention(q.transpose(0, 1), keys, values, slots, chunks, out, scale)
            return out
        for chunk in batch.prefills:
            out[chunk.start:chunk.end] = self._prefill(chunk, q, new_keys, new_values, keys, values, scale)
        return out

    def _prefill_table(self, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every prefill chunk's context as cache slots, for the kernel: a first chunk's are its own write slots
        (written just before), a later chunk's run through its pages. Built by the step's first layer, the same
        for every other."""
        batch = self.batch
        if batch.prefill_table is None:
            contexts, rows, taken = [], [], 0
            for chunk in batch.prefills:
                if chunk.context_pages is None:
                    context = batch.write_slots[chunk.start:chunk.end]
                else:
                    offsets = torch.arange(page_size, device=chunk.context_pages.device)
                    context = (chunk.context_pages.unsqueeze(1) * page_size + offsets).reshape(-1)[:chunk.context_len]
                rows.append((chunk.start, chunk.end - chunk.start, len(context), taken))
                contexts.append(context)
                taken += len(context)
            batch.prefill_table = (torch.cat(contexts).to(torch.int64), torch.tensor(rows, dtype=torch.int64))
        return batch.prefill_table

    def _decode(self, q, keys, values, scale: float) -> torch.Tensor:
        batch = self.batch
        if self.kernels:  # reads each request's pages in place: no gathered copy, no mask
            return cpu_kernels.decode_attention(q.transpose(0, 1), keys, values, batch.decode_table,
                                                batch.decode_lengths, scale)
        n = batch.num_decode
        k = self._gather(keys, batch.decode_pages, n)  # [n, kv_heads, context, d]
        v = self._gather(values, batch.decode_pages, n)
        queries = q.transpose(0, 1).unsqueeze(2)  # [n, heads, 1, d]
        out = F.scaled_dot_product_attention(queries, k, v, attn_mask=batch.decode_mask, scale=scale,
                                             enable_gqa=self.groups > 1)
        return out.squeeze(2)  # [n, heads, d]

    def _prefill(self, chunk: PrefillChunk, q, new_keys, new_values, keys, values, scale: float) -> torch.Tensor:
        queries = q[:, chunk.start:chunk.end].unsqueeze(0)  # [1, heads, chunk, d]
        if chunk.context_pages is None:  # the chunk is the whole context so far: attend to its own keys
            k = new_keys[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            v = new_values[chunk.start:chunk.end].transpose(0, 1).unsqueeze(0)
            out = F.scaled_dot_product_attention(queries, k, v, is_causal=True, scale=scale,
                                                 enable_gqa=self.groups > 1)
        else:
            k = self._gather(keys, chunk.context_pages, 1)[:, :, :chunk.context_len]
            v = self._gather(values, chunk.context_pages, 1)[:, :, :chunk.context_len]
            out = F.scaled_dot_product_attention(queries, k, v, attn_mask=chunk.mask, scale=scale,
                                                 enable_gqa=self.groups > 1)
        return out[0].transpose(0, 1)  # [chunk, heads, d]

    @staticmethod
    def _gather(pool: torch.Tensor, pages: torch.Tensor, rows: int) -> torch.Tensor:
        """The listed pages of `rows` requests, side by side: [rows, kv_heads, pages per row * page_size, d]
        (a strided view of one copy; SDPA reads it as it is)."""
        kv_heads, head_dim = pool.shape[2], pool.shape[3]
        return pool.index_select(0, pages).view(rows, -1, kv_heads, head_dim).transpose(1, 2)


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
        raise UnsupportedModel(f"{type(model).__name__} does not route attention through transformers' AttentionInterface, "
                        "so the engine cannot drive it.")
    _, num_heads, num_kv_heads, head_dim, dtype = seen[0]
    shape = KVShape(num_layers=len(seen), num_kv_heads=num_kv_heads, head_dim=head_dim, dtype=dtype)
    return shape, num_heads, [module for module, *_ in seen]
