"""This machine's ceilings, measured in the same process as the benchmark: matmul FLOP/s in a dtype, and memory
copy bandwidth. An engine's figures mean more next to them (gpt-fast prints the same two numbers)."""
from __future__ import annotations

import time

import torch


def _best_seconds(fn, repeats: int = 5, inner: int = 3) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def matmul_gflops(dtype: torch.dtype, size: int = 2048, device: str = "cpu") -> float:
    """Peak-ish dense matmul throughput: best of several size x size products."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out))
    return 2 * size**3 / seconds / 1e9


def memory_gbps(megabytes: int = 256, device: str = "cpu") -> float:
    """Copy bandwidth, counting bytes read plus bytes written (as STREAM's copy does)."""
    count = megabytes * 2**20 // 4
    source = torch.ones(count, device=device)
    target = torch.empty_like(source)
    seconds = _best_seconds(lambda: target.copy_(source))
    return 2 * source.numel() * source.element_size() / seconds / 1e9


def measure(dtype: torch.dtype, device: str = "cpu") -> dict:
    return {"matmul_gflops": round(matmul_gflops(dtype, device=device), 1), "matmul_dtype": str(dtype).removeprefix("torch."),
            "memory_copy_gbps": round(memory_gbps(device=device), 1), "threads": torch.get_num_threads()}
