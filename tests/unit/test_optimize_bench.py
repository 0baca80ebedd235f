"""`labkit bench optimize` on a tiny model: the JSON contract, the ratios and the table."""
from __future__ import annotations

import json

import pytest

from labkit.bench.optimize_bench import OptimizeWorkload, format_table, meets_target, run_optimize_bench
from labkit.cli import main

pytestmark = pytest.mark.unit
SMALL = OptimizeWorkload(prompt_tokens=64, decode_tokens=4, batch_sizes=(1, 16), repeats=1)


def test_bench_reports_every_variant_with_the_documented_fields(tiny_model_dirs):
    result = run_optimize_bench(tiny_model_dirs["llama"], ("fp32", "torch-int8", "onnx"), SMALL, log=lambda _: None)
    assert set(result) == {"machine", "workload", "systems", "ratios"}
    for name, row in result["systems"].items():
        for key in ("decode_tokens_per_s_b1", "decode_tokens_per_s_b16", "perplexity", "weight_bytes",
                    "prefill_ms_256", "load_s", "greedy_agreement"):
            assert row[key] > 0 or key == "greedy_agreement", (name, key)
    assert result["systems"]["fp32"]["greedy_agreement"] == 1.0
    assert result["systems"]["onnx"]["servable_by_engine"] is False
    assert result["systems"]["onnx"]["onnx_providers"] == ["CPUExecutionProvider"]
    assert result["ratios"]["fp32/decode_tokens_per_s_b1"] == 1.0
    assert result["ratios"]["torch-int8/weight_bytes"] < 1.0
    assert isinstance(meets_target(result), list)
    table = format_table(result)
    assert table.splitlines()[0].startswith("variant") and len(table.splitlines()) == 4


def test_cli_writes_the_json(tiny_model_dirs, tmp_path, capsys):
    path = tmp_path / "optimize.json"
    assert main(["bench", "optimize", "--model", tiny_model_dirs["gpt2"], "--variants", "fp32,bf16",
                 "--decode-tokens", "3", "--json", str(path)]) == 0
    result = json.loads(path.read_text())
    assert set(result["systems"]) == {"fp32", "bf16"}
    assert "bf16" in capsys.readouterr().out


def test_cli_rejects_an_unknown_variant_in_one_line(tiny_model_dirs, capsys):
    assert main(["bench", "optimize", "--model", tiny_model_dirs["gpt2"], "--variants", "int3"]) == 2
    assert "unknown optimization" in capsys.readouterr().err
