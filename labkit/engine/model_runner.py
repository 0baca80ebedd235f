"""One forward pass per step over every scheduled token, packed into a single row.

The runner turns the scheduler's decision, plain data (request ids, positions, tokens, block tables; never a
live Request), into tensors (token ids, positions, where each token's key and value go, what each decode may
attend to), runs the Hugging Face model with the `labkit_paged` attention, and returns logits only for the
tokens that will be sampled. It owns the KV cache's tensors.
"""
from __future__ import annotations

import contextlib
import logging
import weakref

import torch

from ..config import EngineConfig
from . import attention
from .attention import AttentionBatch, PagedAttention, PrefillChunk, decode_mask
from .cuda_graphs import CaptureFailed, DecodeGraphs
from . import cpu_kernels
from .kv_cache import KVShape, PagedKVCache
from .llama_forward import LlamaForward, unsupported_reason
from .packed_linear import check_identical, prepack_linears, unpack_linears
from .input_batch import InputBatch
from .scheduler import ScheduledRequest, SchedulerOutput

log = logging.getLogger("labkit.engine")
GRAPH_DEVICES = ("cuda",)  # where decode steps replay CUDA graphs (the tests add "cpu" to run the same padding)


def sdpa_backends(device: torch.device):
    """On a GPU, SDPA without cuDNN's backend: cuDNN builds an execution plan for each new shape, and every
    prompt length is a new shape (an H200 spent 330 ms on prefill steps that take 35 ms once planned).
    Flash attention takes the causal prompt chunks and memory-efficient attention the masked ones."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


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
        # The Llama family takes a lean forward of its own; everything else runs transformers' modules.
        self.generic_reason = unsupported_reason(model) if config.lean_forward else "lean_forward=False"
        graphed = self.device.type in GRAPH_DEVICES and not self.generic_reason and not config.enforce_eager
        self.cache = PagedKVCache(shape, config.kv_cache_tokens, config.page_size, self.device,
                                  scratch_pages=1 if graphed else 0)
        self.page_size = config.page_size
        self.input_batch = InputBatch(config.max_num_seqs, self.cache.num_pages)
        self.attention = PagedAttention(self.cache, num_heads)
        for layer, module in enumerate(self.attention_modules):
            self.attention.layer_of[id(module)] = layer
            module._labkit_attention = self.attention
        self.previous_attn_implementation = original_attn_implementation
        model.set_attn_implementation(attention.ATTENTION_NAME)
        model._labkit_runner = weakref.ref(self)
        # A 4-D mask makes transformers skip building its own masks (ours are in the batch); it is never read.
        self.no_mask = torch.zeros(1, 1, 1, 1, dtype=torch.bool, device=self.device)
        self.lean = None if self.generic_reason else LlamaForward(model, self.attention, config.prepack_weights,
                                                                   config.max_num_seqs, config.cpu_kernels)
        self.attention.kernels = (self.lean is not None and self.lean.kernels
                                  and cpu_kernels.decode_attention_fits(shape.head_dim, self.attention.groups))
        self.attention.prefill_kernel = self.attention.kernels and cpu_kernels.prefill_attention_fits(shape.head_dim)
        self.graphs = DecodeGraphs(self.lean, self.attention, config.max_num_seqs, self.cache.num_pages,
                                   config.page_size, scratch_page=self.cache.num_pages, mask_dtype=shape.dtype,
                                   device=self.device) if graphed and not self.attention.kernels else None
        self.graphs_off_reason = None
        if self.graphs is not None:
            self._capture_at_start()
        self.packed_linears = []
        if self.lean is None and config.prepack_weights:
            self.packed_linears = prepack_linears(model, config.max_num_seqs)
            if self.packed_linears and not check_identical(self.packed_linears[0]):
                unpack_linears(self.packed_linears)  # this oneDNN build rounds differently: keep the plain layers
                self.packed_linears = []

    @property
    def forward_path(self) -> str:
        """"lean" (the Llama family's own forward) or "generic" (transformers' modules, see `generic_reason`)."""
        return "generic" if self.lean is None else "lean"

    @property
    def num_packed_weights(self) -> int:
        """How many weight matrices are reordered for oneDNN (0 where packing is off or unavailable)."""
        if self.lean is None:
            return len(self.packed_linears)
        projections = [self.lean.lm_head] + [p for layer in self.lean.layers
                                             for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return sum(p.packed is not None for p in projections)

    def detach_for_takeover(self) -> None:
        """Another engine took the model: undo only what is ours (packed weights), and refuse to step."""
        unpack_linears(self.packed_linears)
        self.packed_linears = []
        self.lean = self.graphs = None
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
        self.lean = self.graphs = None

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> tuple[torch.Tensor, list[ScheduledRequest]]:
        """Run the step. Returns logits [samplers, vocab] and the scheduled requests they belong to. Requests
        scheduled with `prompt_logits` also get every computed position's logits, in `self.prompt_logits`
        (request id -> [tokens computed, vocab]; empty when no request asked)."""
        with sdpa_backends(self.device):
            return self._execute(plan)

    def _execute(self, plan: SchedulerOutput) -> tuple[torch.Tensor, list[ScheduledRequest]]:
        if self.taken_over:
            raise RuntimeError("Another engine now drives this model object, so this one stopped; use one engine "
                               "per loaded model (close the old one), or load the model again for a second engine.")
        self.input_batch.update(plan)
        self.prompt_logits: dict[str, torch.Tensor] = {}
        prompt_rows: dict[str, tuple[int, int]] = {}  # request id -> (first row, rows) among the kept logits
        sampling_rows: list[int] = []  # the samplers' rows among the kept logits
        decodes = [s for s in plan.scheduled if s.is_decode]
        ordered = decodes + [s for s in plan.scheduled if not s.is_decode]  # the attention expects decodes first
        token_ids: list[int] = []
        positions: list[int] = []
        token_rows: list[int] = []  # each token's request, as its row in the input batch
        keep: list[int] = []  # packed indices whose logits are needed
        samplers: list[ScheduledRequest] = []
        chunks: list[PrefillChunk] = []
        for item in ordered:
            start, end, first = item.start, item.start + item.num_tokens, len(token_ids)
            row = self.input_batch.row_of[item.request_id]
            token_ids.extend(item.token_ids)
            positions.extend(range(start, end))
            token_rows.extend([row] * item.num_tokens)
            if item.num_tokens > 1:
                chunks.append(self._prefill_chunk(first, start, end, row))
            if item.prompt_logits:  # prompt log-probabilities: every position's logits, for this request only
                prompt_rows[item.request_id] = (len(keep), item.num_tokens)
                keep.extend(range(first, first + item.num_tokens - item.samples))
            if item.samples:
                sampling_rows.append(len(keep))
                keep.append(first + item.num_tokens - 1)
                samplers.append(item)
        page_size = self.page_size
        positions_cpu = torch.tensor(positions)
        write_pages = self.input_batch.block_table[torch.tensor(token_rows), positions_cpu // page_size]
        write_slots = write_pages * page_size + positions_cpu % page_size
        if (self.graphs is not None and len(keep) == len(decodes) == len(ordered) and not prompt_rows
                and self.graphs.fits(len(decodes))):
            logits = self._decode_graphed(decodes, token_ids, positions_cpu, write_slots)
            if logits is not None:
                return logits, samplers
        batch = AttentionBatch(write_slots=self._upload(write_slots), num_decode=len(decodes), prefills=tuple(chunks))
        if decodes:
            self._describe_decodes(batch, decodes)
        token_tensor = self._upload(torch.tensor(token_ids))
        position_tensor = self._upload(positions_cpu)
        keep_tensor = self._upload(torch.tensor(keep, dtype=torch.long))
        self.attention.batch = batch
        try:
            if self.lean is not None:
                logits = self.lean(token_tensor, position_tensor, keep_tensor)
            else:
                logits = self.model(input_ids=token_tensor.unsqueeze(0), position_ids=position_tensor.unsqueeze(0),
                                    attention_mask=self.no_mask, use_cache=False, logits_to_keep=keep_tensor).logits[0]
            if not prompt_rows:
                return logits, samplers
            self.prompt_logits = {rid: logits[first:first + n] for rid, (first, n) in prompt_rows.items()}
            return logits.index_select(0, self._upload(torch.tensor(sampling_rows, dtype=torch.long))), samplers
        finally:
            self.attention.batch = None

    def _capture_at_start(self) -> None:
        try:
            with sdpa_backends(self.device):
                self.graphs.capture_common()
        except Exception as error:
            self._graphs_off(f"capturing decode steps at start: {error!r}")

    def _graphs_off(self, reason: str) -> None:
        self.graphs_off_reason = reason
        log.warning("decode steps run eagerly from now on: %s", reason)
        self.graphs = None

    def _decode_graphed(self, decodes, token_ids, positions: torch.Tensor, write_slots: torch.Tensor):
        """A step of decodes only, on a GPU: replayed from a CUDA graph (cuda_graphs.py). A capture that fails
        (an op this torch cannot record) turns graphs off for this engine, with a warning, and returns None: the
        step then runs eagerly, slower, never wrong."""
        table, contexts = self._decode_table(decodes)
        try:
            return self.graphs.run(token_ids, positions, write_slots, table, contexts)
        except CaptureFailed as error:
            self._graphs_off(str(error))
            return None

    def _upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor of the step built on the host (indices, a mask), on the model's device. non_blocking: a
        copy from pageable host memory is staged before the call returns, and without it each copy would also
        wait for the GPU's queue to drain (a host-device sync per tensor). On the CPU it is the tensor itself."""
        return tensor.to(self.device, non_blocking=True)

    def _prefill_chunk(self, first: int, start: int, end: int, row: int) -> PrefillChunk:
        if start == 0:
            return PrefillChunk(first, first + end - start)
        # A later chunk of a long prompt (or one after cached pages): it attends to the cached start of the
        # prompt and causally to itself.
        pages = self._upload(self.input_batch.block_table[row, :-(-end // self.page_size)])
        mask = None
        if not self.attention.prefill_kernel:  # SDPA's; the kernel masks by position itself
            query_positions = torch.arange(start, end, device=self.device).unsqueeze(1)
            mask = torch.arange(end, device=self.device).unsqueeze(0) <= query_positions
        return PrefillChunk(first, first + end - start, context_pages=pages, mask=mask, context_len=end)

    def _describe_decodes(self, batch: AttentionBatch, decodes: list[ScheduledRequest]) -> None:
        """Each decode's pages, padded to the most any of them holds (padding reads whatever page the row
        held before; it is masked), and an additive mask: 0 on the request's tokens, -inf elsewhere."""
        table, contexts = self._decode_table(decodes)
        if self.attention.kernels:  # on the CPU: no upload, no mask
            batch.decode_table, batch.decode_lengths = table, contexts
            return
        batch.decode_pages = self._upload(table.reshape(-1))
        batch.decode_mask = self._upload(decode_mask(contexts, table.shape[1] * self.page_size, self.kv_shape.dtype))

    def _decode_table(self, decodes: list[ScheduledRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each decode's pages [decodes, most any holds] and context length (its cached tokens and the new one)."""
        contexts = torch.tensor([d.start + 1 for d in decodes])
        most = -(-int(contexts.max()) // self.page_size)
        return self.input_batch.block_table[self.input_batch.rows(d.request_id for d in decodes), :most], contexts
