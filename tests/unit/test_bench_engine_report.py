"""`labkit bench engine`'s printed report: tails under their honest name, and a shared CPU said out loud."""
from __future__ import annotations

import pytest

from labkit.bench.engine_bench import format_report

pytestmark = pytest.mark.unit


def _system(tps, contention, requests=32):
    return {"output_tokens_per_s": tps, "wall_s": 10.0, "latency_p50_s": 1.0, "latency_p99_s": 2.9,
            "latency_max_s": 3.0, "requests": requests, "ttft_mean_s": 0.5, "output_tokens": 1000,
            "tokens_as_requested": True, "cpu_contention": contention}


def _report(**systems):
    return {"systems": systems, "ratios": {},
            "machine": {"matmul_gflops": 150, "matmul_dtype": "bf16", "memory_copy_gbps": 20, "threads": 2,
                        "cpu": "test CPU"}}


def test_fewer_than_a_hundred_requests_print_the_slowest_as_max():
    text = format_report(_report(**{"hf-static": _system(50.0, 0.01)}))
    assert "   max s" in text.splitlines()[0] and "p99" not in text.splitlines()[0]
    assert "    3.00" in text.splitlines()[1]
    many = format_report(_report(**{"hf-static": _system(50.0, 0.01, requests=128)}))
    assert "   p99 s" in many.splitlines()[0] and "    2.90" in many.splitlines()[1]


def test_a_contended_system_is_flagged_and_a_quiet_one_is_not():
    text = format_report(_report(**{"hf-static": _system(50.0, 0.45), "hf-sequential": _system(20.0, 0.02)}))
    assert "SHARED CPU: hf-static ran with a task waiting for a CPU 45% of the time" in text
    assert "hf-sequential ran" not in text
    assert "SHARED CPU" not in format_report(_report(**{"hf-static": _system(50.0, None)}))
