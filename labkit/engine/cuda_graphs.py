"""Decode steps replayed as CUDA graphs (vLLM's and nano-vllm's capture), so a GPU step costs one launch.

Eager, a decode step of the lean forward is about 35 small kernels a layer, each launched from Python: on an
H200 the default model decoded 39 tok/s at batch 1 (25 ms a token for ~1,000 launches of microseconds of
work each). A graph records those launches once and replays them with one call; only its inputs change.

A graph has fixed shapes, so steps are bucketed: the batch is padded up to the next captured batch size, and
each decode's pages up to the next power of two (the gathered context and its mask have that many pages).
Padding rows decode token 0 at position 0, write their key and value into a scratch page no request ever
holds (`PagedKVCache(scratch_pages=1)`) and attend to that page alone; their logits are dropped. Every batch
size is captured when the engine starts, for contexts up to 256 tokens; a longer context's bucket is captured
the first time it is needed. All graphs share one memory pool (steps run one at a time, and each step's logits
are read before the next replay); the capture time is counted in `stats()`.

Prefill steps (and decodes beside a prefill chunk) stay eager: their shapes vary with every prompt.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch

from .attention import AttentionBatch, decode_mask

STARTUP_CONTEXT_TOKENS = 256  # captured when the engine starts: every batch size, contexts up to this long
BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256)


def bucket(n: int, sizes) -> int:
    """The smallest size that holds n."""
    return next(size for size in sizes if size >= n)


def page_buckets(max_pages: int) -> tuple[int, ...]:
    sizes = [1]
    while sizes[-1] < max_pages:
        sizes.append(min(sizes[-1] * 2, max_pages))
    return tuple(sizes)


class CaptureFailed(RuntimeError):
    """A decode step could not be recorded as a CUDA graph (the engine then decodes eagerly)."""


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph | None  # None until captured, and off a GPU
    token_ids: torch.Tensor  # [batch]
    positions: torch.Tensor  # [batch]
    write_slots: torch.Tensor  # [batch]
    pages: torch.Tensor  # [batch * pages]
    mask: torch.Tensor  # [batch, 1, 1, pages * page_size]
    keep: torch.Tensor  # arange(batch): every row's logits
    logits: torch.Tensor | None  # [batch, vocab], written by each replay (None off a GPU)


class DecodeGraphs:
    def __init__(self, forward, attention, max_batch: int, max_pages: int, page_size: int, scratch_page: int,
                 mask_dtype: torch.dtype, device: torch.device):
        self.forward, self.attention = forward, attention
        self.batch_sizes = tuple(s for s in BATCH_SIZES if s < max_batch) + (max_batch,)
        self.page_sizes = page_buckets(max_pages)
        self.page_size, self.scratch_page = page_size, scratch_page
        self.mask_dtype, self.device = mask_dtype, device
        self.graphs: dict[tuple[int, int], _Graph] = {}
        self.pool = None
        self.capture_s = 0.0
        self.replays: Counter[tuple[int, int]] = Counter()  # (batch size, pages) -> steps replayed

    def capture_common(self, context_tokens: int = STARTUP_CONTEXT_TOKENS) -> None:
        """Capture every batch size for contexts up to `context_tokens` now (vLLM captures at start too), so the
        first minutes of serving do not pay for captures; longer contexts are captured on first use."""
        most = max(1, context_tokens // self.page_size)
        with torch.inference_mode():
            for pages in (p for p in self.page_sizes if p <= most):
                for size in reversed(self.batch_sizes):  # the largest first: the smaller ones reuse its pool
                    if (size, pages) not in self.graphs:
                        self._capture(size, pages)

    def fits(self, num_decodes: int) -> bool:
        return num_decodes <= self.batch_sizes[-1]

    def run(self, token_ids: list[int], positions: torch.Tensor, write_slots: torch.Tensor, table: torch.Tensor,
            contexts: torch.Tensor) -> torch.Tensor:
        """A decode-only step: token ids, positions and write slots [n], each decode's pages [n, most] and
        context lengths [n], all on the host. Returns the step's logits [n, vocab] (valid until the next run)."""
        n, most = table.shape
        size, pages = bucket(n, self.batch_sizes), bucket(most, self.page_sizes)
        graph = self.graphs.get((size, pages))
        if graph is None:
            try:
                graph = self._capture(size, pages)
            except Exception as error:
                raise CaptureFailed(f"capturing a decode step of {size} rows and {pages} pages: {error!r}") from error
        ids, pos, slots, page_table, lengths = self._padding(size, pages)
        ids[:n] = torch.tensor(token_ids)
        pos[:n], slots[:n], page_table[:n, :most], lengths[:n] = positions, write_slots, table, contexts
        for static, host in ((graph.token_ids, ids), (graph.positions, pos), (graph.write_slots, slots),
                             (graph.pages, page_table.view(-1)), (graph.mask, self._mask(lengths, pages))):
            static.copy_(host, non_blocking=True)
        self.replays[(size, pages)] += 1
        return self._replay(graph)[:n]

    def stats(self) -> dict:
        return {"cuda_graphs": len(self.graphs), "cuda_graph_capture_s": round(self.capture_s, 3),
                "cuda_graph_replays": sum(self.replays.values())}

    def _padding(self, size: int, pages: int):
        """Host inputs of a bucket, every row a padding row until filled."""
        return (torch.zeros(size, dtype=torch.long), torch.zeros(size, dtype=torch.long),
                torch.full((size,), self.scratch_page * self.page_size, dtype=torch.long),
                torch.full((size, pages), self.scratch_page, dtype=torch.long), torch.ones(size, dtype=torch.long))

    def _mask(self, lengths: torch.Tensor, pages: int) -> torch.Tensor:
        return decode_mask(lengths, pages * self.page_size, self.mask_dtype)

    def _attending(self, graph: _Graph) -> AttentionBatch:
        return AttentionBatch(write_slots=graph.write_slots, num_decode=len(graph.keep), decode_pages=graph.pages,
                              decode_mask=graph.mask)

    def _replay(self, graph: _Graph) -> torch.Tensor:
        if graph.graph is not None:
            graph.graph.replay()
            return graph.logits
        # Off a GPU (the tests' CPU): the same padded inputs through the forward, op by op.
        self.attention.batch = self._attending(graph)
        try:
            return self.forward(graph.token_ids, graph.positions, graph.keep)
        finally:
            self.attention.batch = None

    def _capture(self, size: int, pages: int) -> _Graph:
        started = time.perf_counter()
        ids, pos, slots, page_table, lengths = self._padding(size, pages)
        inputs = [t.to(self.device) for t in (ids, pos, slots, page_table.view(-1), self._mask(lengths, pages))]
        keep = torch.arange(size, device=self.device)
        captured = self.graphs[(size, pages)] = _Graph(None, *inputs, keep, None)
        if self.device.type != "cuda":
            return captured
        self.attention.batch = self._attending(captured)
        try:
            if self.pool is None:  # the first capture: lazy initialisations (cuBLAS handles) happen outside it
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    self.forward(inputs[0], inputs[1], keep)
                torch.cuda.current_stream(self.device).wait_stream(side)
                self.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                captured.logits = self.forward(inputs[0], inputs[1], keep)
            captured.graph = graph
        except BaseException:
            del self.graphs[(size, pages)]
            raise
        finally:
            self.attention.batch = None
        self.capture_s += time.perf_counter() - started
        return captured
