"""This machine's ceilings, measured in the same process as the benchmark: matmul FLOP/s in a dtype, and memory
copy bandwidth, on the CPU or on a CUDA device. An engine's figures mean more next to them (gpt-fast prints the
same two numbers)."""
from __future__ import annotations

import time

import torch

# A GPU needs bigger operands than a CPU to reach its peak: an 8192^3 bf16 product keeps an H100/H200 busy for
# about a millisecond, and a 1 GiB copy is many times its L2 cache, so neither times launch overhead or cache.
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}
COPY_MEGABYTES = {"cpu": 256, "cuda": 1024}


def _best_seconds(fn, device: torch.device, repeats: int = 5, inner: int = 3) -> float:
    """The best of `repeats` timings of `inner` calls. A GPU runs its kernels asynchronously, so its timings
    start and stop on an empty queue (synchronize), or they would time the launches rather than the work."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()  # warm-up: first calls pay for allocation and kernel selection
    best = float("inf")
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        best = min(best, (time.perf_counter() - started) / inner)
    return best


def matmul_gflops(dtype: torch.dtype, size: int | None = None, device: str = "cpu") -> float:
    """Peak-ish dense matmul throughput: best of several size x size products."""
    device = torch.device(device)
    size = size or MATMUL_SIZE.get(device.type, MATMUL_SIZE["cpu"])
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out), device, inner=3 if device.type == "cpu" else 10)
    return 2 * size**3 / seconds / 1e9


def memory_gbps(megabytes: int | None = None, device: str = "cpu") -> float:
    """Copy bandwidth, counting bytes read plus bytes written (as STREAM's copy does)."""
    device = torch.device(device)
    count = (megabytes or COPY_MEGABYTES.get(device.type, COPY_MEGABYTES["cpu"])) * 2**20 // 4
    source = torch.ones(count, device=device)
    target = torch.empty_like(source)
    seconds = _best_seconds(lambda: target.copy_(source), device, inner=3 if device.type == "cpu" else 10)
    return 2 * source.numel() * source.element_size() / seconds / 1e9


def measure(dtype: torch.dtype, device: str | torch.device = "cpu") -> dict:
    device = torch.device(device)
    ceiling = {"matmul_gflops": round(matmul_gflops(dtype, device=device), 1),
               "matmul_dtype": str(dtype).removeprefix("torch."),
               "memory_copy_gbps": round(memory_gbps(device=device), 1), "roofline_device": device.type}
    if device.type == "cuda":
        ceiling["gpu"] = torch.cuda.get_device_name(device)
    else:
        ceiling["threads"] = torch.get_num_threads()
    return ceiling
