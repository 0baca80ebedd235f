"""The roofline's ceilings on the CPU, its timing discipline on a GPU (without one: the synchronisations are
counted), `bench engine --device cuda` where there is no CUDA, and `make gpu-check`'s answer on such a machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from labkit.bench import roofline
from labkit.cli import main

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")


def test_cpu_ceilings_are_positive_and_name_the_cpu(monkeypatch):
    monkeypatch.setitem(roofline.MATMUL_SIZE, "cpu", 256)  # small operands: the shape of the answer, quickly
    monkeypatch.setitem(roofline.COPY_MEGABYTES, "cpu", 8)
    ceiling = roofline.measure(torch.bfloat16, "cpu")
    assert ceiling["roofline_device"] == "cpu" and ceiling["matmul_dtype"] == "bfloat16"
    assert 0.01 < ceiling["matmul_gflops"] < 1e5 and 0.01 < ceiling["memory_copy_gbps"] < 1e4
    assert ceiling["threads"] == torch.get_num_threads() and "gpu" not in ceiling


def test_gpu_timings_start_and_end_on_a_drained_queue(monkeypatch):
    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: events.append("sync"))
    roofline._best_seconds(lambda: events.append("work"), torch.device("cuda"), repeats=2, inner=3)
    timed = events[1:]  # after the warm-up call
    assert timed == ["sync", "work", "work", "work", "sync"] * 2


def test_cpu_timings_do_not_touch_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: pytest.fail("synchronised a CPU timing"))
    assert roofline._best_seconds(lambda: None, torch.device("cpu"), repeats=2, inner=2) >= 0


@no_cuda
def test_bench_engine_on_cuda_without_cuda_is_a_one_line_error(capsys):
    assert main(["bench", "engine", "--device", "cuda", "--no-tune", "--systems", "labkit"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("labkit: error:") and "no CUDA device" in err and "\n" not in err


@no_cuda
def test_gpu_check_without_cuda_says_so_and_succeeds(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env["LABKIT_GPU_CHECK_DIR"] = str(tmp_path)
    logs_before = set((ROOT / "benchmarks").glob("gpu-check-*"))
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA: nothing to check" in done.stdout
    assert not list(tmp_path.iterdir())  # nothing was prepared
    assert set((ROOT / "benchmarks").glob("gpu-check-*")) == logs_before  # and no log left beside the results
