"""`labkit bench engine` end to end on a tiny model: all four systems, the JSON shape of DESIGN.md, the token
check, the roofline and the ratios; and the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from labkit.bench.engine_bench import BATCH1_TOKENS, SYSTEMS, bench_engine, format_report
from labkit.openmp import tuned_environment

pytestmark = pytest.mark.integration


def test_bench_engine_runs_every_system_and_checks_tokens(tiny_model_dirs):
    report = bench_engine(tiny_model_dirs["llama"], requests=3, seed=1, dtype="float32", log=lambda line: None)
    assert set(report["systems"]) == set(SYSTEMS)
    wanted = report["workload"]["output_tokens"]
    for name, system in report["systems"].items():
        assert system["output_tokens"] == wanted and system["tokens_as_requested"], name
        assert system["output_tokens_per_s"] == pytest.approx(wanted / system["wall_s"], rel=0.01)
        assert 0 < system["ttft_mean_s"] <= system["latency_p50_s"] <= system["latency_p99_s"] <= system["wall_s"] + 1e-3
    assert report["all_tokens_as_requested"]
    assert set(report["ratios"]) == {"labkit_vs_hf-sequential", "labkit_vs_hf-static", "labkit_vs_hf-continuous"}
    machine = report["machine"]
    assert machine["matmul_gflops"] > 1 and machine["memory_copy_gbps"] > 0.1 and machine["logical_cores"] >= 1
    ours = report["systems"]["labkit"]
    assert 0 < ours["mfu"] < 1 and 0 < ours["weight_bandwidth_utilisation"] and ours["steps"] > 0
    assert machine["roofline_device"] == "cpu" and report["model"]["device"] == "cpu"
    assert ours["batch1_output_tokens"] == BATCH1_TOKENS and ours["batch1_decode_tokens_per_s"] > 0
    assert ours["batch1_weight_read_gbps"] > 0 and 0 < ours["batch1_weight_bandwidth_utilisation"]
    text = format_report(report)
    assert "labkit" in text and "MFU" in text and "roofline" in text and "at batch 1" in text
    json.dumps(report)  # plain values only


def test_tuned_environment_is_the_same_for_every_system():
    env = tuned_environment({"PATH": "/bin"})
    assert env["GOMP_SPINCOUNT"] == "10000" and env["OMP_WAIT_POLICY"] == "ACTIVE"
    assert env["LABKIT_TUNED"] == "1"
    chosen = tuned_environment({"OMP_WAIT_POLICY": "ACTIVE"})  # the caller's choice wins
    assert chosen["OMP_WAIT_POLICY"] == "ACTIVE" and "GOMP_SPINCOUNT" not in chosen
    assert tuned_environment({"KMP_BLOCKTIME": "200"})["KMP_BLOCKTIME"] == "200"  # so does any one of them


def test_cli_bench_engine_writes_json(tiny_model_dirs, tmp_path):
    out = tmp_path / "engine.json"
    result = subprocess.run([sys.executable, "-m", "labkit.cli", "bench", "engine", "--model", tiny_model_dirs["gpt2"],
                             "--requests", "2", "--dtype", "float32", "--systems", "hf-sequential,labkit",
                             "--device", "cpu", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["systems"]) == {"hf-sequential", "labkit"} and "labkit_vs_hf-sequential" in report["ratios"]
    assert "labkit" in result.stdout and "tok/s" in result.stdout
