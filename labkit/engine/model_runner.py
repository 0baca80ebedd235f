"""One forward pass per step over every scheduled token, packed into a single row.

The runner turns the scheduler's decision, plain data (request ids, positions, tokens, block tables; never a
live Request), into tensors (token ids, positions, where each token's key and value go, what each decode may
attend to), runs the Hugging Face model with the `labkit_paged` attention, and returns logits only for the
tokens that will be sampled. It owns the KV cache's tensors.
"""
from __future__ import annotations

import weakref

import torch

from ..config import EngineConfig
from . import attention
from .attention import AttentionBatch, PagedAttention, PrefillChunk
from .kv_cache import KVShape, PagedKVCache
from .packed_linear import check_identical, prepack_linears, unpack_linears
from .scheduler import ScheduledRequest


class ModelRunner:
    def __init__(self, model, config: EngineConfig):
        self.model = model
        self.device = next(model.parameters()).device
        self.taken_over = False
        # One engine drives a model object at a time: the attention hooks and packed weights live on the model.
        # A second engine takes it over (a notebook re-running `LLM(model)`, or serving a model a cell already
        # uses); the first then refuses to step rather than write into the newcomer's KV cache.
        owner = getattr(model, "_labkit_runner", None)
        owner = owner() if owner is not None else None
        if owner is not None and not owner.closed:
            owner.detach_for_takeover()
            original_attn_implementation = owner.previous_attn_implementation
        else:
            original_attn_implementation = model.config._attn_implementation
        self.closed = False
        attention.register()
        probe_ids = torch.zeros(1, 2, dtype=torch.long, device=self.device)
        shape, num_heads, self.attention_modules = attention.probe_kv_shape(model, probe_ids)
        self.kv_shape: KVShape = shape
        self.cache = PagedKVCache(shape, config.kv_cache_tokens, config.page_size, self.device)
        self.page_size = config.page_size
        self.attention = PagedAttention(self.cache, num_heads)
        for layer, module in enumerate(self.attention_modules):
            self.attention.layer_of[id(module)] = layer
            module._labkit_attention = self.attention
        self.previous_attn_implementation = original_attn_implementation
        model.set_attn_implementation(attention.ATTENTION_NAME)
        model._labkit_runner = weakref.ref(self)
        # A 4-D mask makes transformers skip building its own masks (ours are in the batch); it is never read.
        self.no_mask = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=self.device)
        self.page_slots = torch.arange(self.page_size, device=self.device)
        self.packed_linears = prepack_linears(model, config.max_num_seqs) if config.prepack_weights else []
        if self.packed_linears and not check_identical(self.packed_linears[0]):
            unpack_linears(self.packed_linears)  # this oneDNN build rounds differently: keep the plain layers
            self.packed_linears = []

    def detach_for_takeover(self) -> None:
        """Another engine took the model: undo only what is ours (packed weights), and refuse to step."""
        unpack_linears(self.packed_linears)
        self.packed_linears = []
        self.taken_over = self.closed = True

    def close(self) -> None:
        """Detach from the model: it goes back to its own attention implementation."""
        if self.closed:
            return
        self.closed = True
        self.model.__dict__.pop("_labkit_runner", None)
        for module in self.attention_modules:
            module.__dict__.pop("_labkit_attention", None)
        self.model.set_attn_implementation(self.previous_attn_implementation)
        unpack_linears(self.packed_linears)
        self.packed_linears = []

    @torch.inference_mode()
    def execute(self, scheduled: list[ScheduledRequest],
                block_tables: dict[str, list[int]]) -> tuple[torch.Tensor, list[ScheduledRequest]]:
        """Run the step. Returns logits [samplers, vocab] and the scheduled requests they belong to."""
        if self.taken_over:
            raise RuntimeError("Another engine now drives this model object, so this one stopped; use one engine "
                               "per loaded model (close the old one), or load the model again for a second engine.")
        decodes = [s for s in scheduled if s.is_decode]
        prefills = [s for s in scheduled if not s.is_decode]
        ordered = decodes + prefills  # the attention expects decodes first
        token_ids: list[int] = []
        positions: list[int] = []
        write_pages: list[int] = []
        keep: list[int] = []  # packed indices whose logits are needed
        samplers: list[ScheduledRequest] = []
        chunks: list[PrefillChunk] = []
        page_size = self.page_size
        for item in ordered:
            start = item.start
            end = start + item.num_tokens
            table = block_tables[item.request_id]
            row = len(token_ids)
            token_ids.extend(item.token_ids)
            positions.extend(range(start, end))
            write_pages.extend(table[p // page_size] for p in range(start, end))
            if item.num_tokens > 1:
                chunks.append(self._prefill_chunk(row, start, end, table))
            if item.samples:
                keep.append(row + item.num_tokens - 1)
                samplers.append(item)
        device = self.device
        position_tensor = torch.tensor(positions, device=device)
        batch = AttentionBatch(
            write_pages=torch.tensor(write_pages, device=device),
            write_offsets=position_tensor % page_size,
            num_decode=len(decodes),
            prefills=tuple(chunks))
        if decodes:
            self._describe_decodes(batch, decodes, block_tables)
        self.attention.batch = batch
        try:
            out = self.model(input_ids=torch.tensor([token_ids], device=device),
                             position_ids=position_tensor.unsqueeze(0), attention_mask=self.no_mask,
                             use_cache=False, logits_to_keep=torch.tensor(keep, dtype=torch.long, device=device))
        finally:
            self.attention.batch = None
        return out.logits[0], samplers

    def _prefill_chunk(self, row: int, start: int, end: int, table: list[int]) -> PrefillChunk:
        if start == 0:
            return PrefillChunk(row, row + end - start)
        # A later chunk of a long prompt: it attends to the cached start of the prompt and causally to itself.
        query_positions = torch.arange(start, end, device=self.device).unsqueeze(1)
        mask = torch.arange(end, device=self.device).unsqueeze(0) <= query_positions
        pages = torch.tensor(table[:-(-end // self.page_size)], device=self.device)
        return PrefillChunk(row, row + end - start, context_pages=pages, mask=mask, context_len=end)

    def _describe_decodes(self, batch: AttentionBatch, decodes: list[ScheduledRequest],
                          block_tables: dict[str, list[int]]) -> None:
        """Which decode owns each page of the pool, and how many of that page's slots it has filled. A page
        shared through the prefix cache belongs to its first decode here; each other decode that reads it
        gets an extra (decode, page) pair, gathered from the pool on its own."""
        page_size = self.page_size
        tables = [block_tables[d.request_id] for d in decodes]
        pool = 1 + max(max(t) for t in tables)
        owner = [0] * pool
        filled = [0] * pool
        extra_owner: list[int] = []
        extra_pages: list[int] = []
        for row, (item, table) in enumerate(zip(decodes, tables)):
            context = item.start + 1  # the cached tokens and the new one
            for index in range(-(-context // page_size)):
                page = table[index]
                if filled[page]:  # shared, hence full: another decode already reads it in place
                    extra_owner.append(row)
                    extra_pages.append(page)
                    continue
                owner[page] = row
                filled[page] = min(page_size, context - index * page_size)
        device = self.device
        owner_tensor = torch.tensor(owner + extra_owner, device=device)
        filled_tensor = torch.tensor(filled + [page_size] * len(extra_pages), device=device)
        slots = len(owner) + len(extra_owner)
        visible = self.page_slots.unsqueeze(0) < filled_tensor.unsqueeze(1)  # [slots, page]
        bias = torch.zeros(slots, page_size, device=device).masked_fill_(~visible, float("-inf"))
        batch.num_pool_pages = pool
        batch.extra_pages = torch.tensor(extra_pages, device=device) if extra_pages else None
        batch.page_owner = owner_tensor
        batch.owner_index = owner_tensor.view(slots, 1, 1, 1).expand(
            slots, self.attention.num_kv_heads, self.attention.groups, 1)
        batch.page_bias = bias.view(slots, 1, 1, page_size)
        owned = filled_tensor > 0
        matrix = torch.zeros(len(decodes), slots, device=device)
        matrix[owner_tensor[owned], torch.arange(slots, device=device)[owned]] = 1.0
        batch.page_owner_matrix = matrix
