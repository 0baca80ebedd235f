"""The runner's own, persistent copy of the batch (vLLM v1's InputBatch, at this engine's size).

Each request in the batch has a row; its block table lives in one preallocated tensor, extended with only the
pages the scheduler added since the last step, and the row is freed when the request leaves. The per-step
index tensors (which page each new token goes to, the pages each decode reads, the pages a prefill chunk
continues from) are then tensor lookups into that table instead of Python lists rebuilt from every request's
whole table.
"""
from __future__ import annotations

import torch

from .scheduler import SchedulerOutput


class InputBatch:
    def __init__(self, max_requests: int, max_pages_per_request: int):
        # Kept on the CPU: it is small, updated a few entries a step, and read through index tensors.
        self.block_table = torch.zeros(max_requests, max_pages_per_request, dtype=torch.long)
        self.num_pages = [0] * max_requests
        self.row_of: dict[str, int] = {}
        self._free_rows = list(range(max_requests - 1, -1, -1))

    def update(self, plan: SchedulerOutput) -> None:
        """Apply the scheduler's deltas: rows of departed requests are freed, then new pages appended."""
        for request_id in plan.departed:
            row = self.row_of.pop(request_id, None)
            if row is not None:
                self.num_pages[row] = 0
                self._free_rows.append(row)
        for request_id, pages in plan.new_block_ids.items():
            row = self.row_of.get(request_id)
            if row is None:
                if not self._free_rows:
                    raise RuntimeError(f"The input batch has no free row for {request_id}: more requests are "
                                       f"running than the {len(self.num_pages)} it was sized for.")
                row = self.row_of[request_id] = self._free_rows.pop()
            start = self.num_pages[row]
            self.block_table[row, start:start + len(pages)] = torch.tensor(pages, dtype=torch.long)
            self.num_pages[row] = start + len(pages)

    def rows(self, request_ids) -> torch.Tensor:
        return torch.tensor([self.row_of[r] for r in request_ids], dtype=torch.long)
