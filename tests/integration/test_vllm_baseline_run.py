"""vLLM's CPU build as a baseline, for real: a few requests through `bench_engine` with labkit and vllm, in
the same table and JSON, with the token check. Needs `make vllm` (.venv-vllm, or LABKIT_VLLM_PYTHON); CI has
neither, so it skips there. Slow: vLLM starts up (and compiles) in about 1-2 minutes on 2 cores."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from labkit.bench.engine_bench import bench_engine
from labkit.bench.engine_bench import format_report

pytestmark = pytest.mark.integration

VLLM_PYTHON = os.environ.get("LABKIT_VLLM_PYTHON") or str(Path(__file__).parents[2] / ".venv-vllm" / "bin" / "python")


@pytest.mark.skipif(not os.path.exists(VLLM_PYTHON), reason=f"no vLLM venv at {VLLM_PYTHON}: `make vllm` builds it")
def test_vllm_runs_the_same_requests_into_the_same_table(default_llm_dir):
    report = bench_engine("smollm2-135m-instruct", requests=3, seed=2, dtype="bfloat16", systems=("labkit", "vllm"),
                          log=lambda line: None, vllm_python=VLLM_PYTHON)
    wanted = report["workload"]["output_tokens"]
    ours, theirs = report["systems"]["labkit"], report["systems"]["vllm"]
    assert theirs["output_tokens"] == ours["output_tokens"] == wanted and theirs["tokens_as_requested"]
    assert report["all_tokens_as_requested"] and "labkit_vs_vllm" in report["ratios"]
    assert 0 < theirs["ttft_mean_s"] <= theirs["latency_p50_s"] <= theirs["latency_p99_s"] <= theirs["wall_s"] + 1e-3
    assert theirs["vllm_version"] == "0.32.0" and "engine core's timestamps" in theirs["notes"]
    assert "libiomp5.so" in theirs["vllm_env"]["LD_PRELOAD"] and theirs["vllm_env"]["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert "vllm" in format_report(report)
    json.dumps(report)  # plain values only
