"""`labkit bench serve` against a live labkit server: the JSON has DESIGN.md's shape and adds up."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import labkit
from labkit import ServerConfig
from labkit.bench.serve_bench import SLO, Workload, bench_serve, response_format

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tiny_model_dirs):
    llm = labkit.load_model(tiny_model_dirs["qwen2"], device="cpu", dtype="float32", progress=False)
    with labkit.serve(llm, config=ServerConfig(max_waiting=2), max_num_seqs=2) as handle:
        yield handle


def test_report_shape_percentiles_and_goodput(server):
    report = bench_serve(server.url, Workload(requests=6, concurrency=3, min_tokens=4, max_tokens=12),
                         slo=SLO(ttft_ms=60_000, e2e_ms=0.001))
    assert set(report) == {"machine", "workload", "systems", "ratios"}
    (name, system), = report["systems"].items()
    assert name == "labkit"
    assert system["completed"] == 6 and system["errors"] == 0
    assert 0 < system["output_tokens"] <= sum(n for _, n in Workload(6, 3, 4, 12).items())
    assert system["output_tokens_per_s"] == pytest.approx(system["output_tokens"] / system["wall_s"])
    for metric in ("ttft", "itl", "latency"):
        assert system[f"{metric}_p50_s"] <= system[f"{metric}_p99_s"]
        assert system[f"{metric}_mean_s"] > 0
    assert system["slo_attainment"] == 0.0 and system["goodput_requests_per_s"] == 0.0  # nobody meets 1 µs e2e


def test_overload_shows_up_as_errors_not_a_crash(server):
    report = bench_serve(server.url, Workload(requests=12, concurrency=12, min_tokens=30, max_tokens=40), warmup=0)
    system = report["systems"]["labkit"]
    assert system["completed"] + system["errors"] == 12
    assert system["errors"] > 0 and set(system["error_kinds"]) == {"HTTP 429"}


def test_cli_writes_the_json(server, tmp_path):
    out = tmp_path / "serve.json"
    result = subprocess.run([sys.executable, "-m", "labkit.cli", "bench", "serve", "--url", server.url,
                             "--concurrency", "2", "--requests", "4", "--max-tokens", "8", "--min-tokens", "4",
                             "--slo-ttft-ms", "60000", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "output tok/s" in result.stdout and "goodput" in result.stdout
    assert json.loads(out.read_text())["systems"]["labkit"]["completed"] == 4



def test_response_format_asks_every_request_for_structured_output(server, tmp_path):
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps({"type": "boolean"}))  # a grammar that ends after one word: every output parses
    report = bench_serve(server.url, Workload(requests=4, concurrency=2, min_tokens=8, max_tokens=8,
                                              response_format=response_format(str(schema))), warmup=0)
    system = report["systems"]["labkit"]
    assert system["completed"] == 4 and system["outputs_parsing_as_json"] == 4
    assert report["workload"]["response_format"]["json_schema"]["schema"] == {"type": "boolean"}
    plain = bench_serve(server.url, Workload(requests=2, concurrency=2, min_tokens=8, max_tokens=8), warmup=0)
    assert "outputs_parsing_as_json" not in plain["systems"]["labkit"]


def test_response_format_flag_is_json_object_or_a_readable_schema(tmp_path):
    assert response_format("json_object") == {"type": "json_object"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for value, message in ((str(tmp_path / "missing.json"), "cannot read"), (str(bad), "is not JSON")):
        with pytest.raises(ValueError, match=message):
            response_format(value)


def test_the_engine_workload_serves_bench_engines_requests_at_their_exact_lengths(server):
    from labkit.bench.engine_workload import EngineWorkload

    workload = Workload(requests=3, concurrency=3, min_tokens=5, max_tokens=9, name="engine")
    wanted = EngineWorkload(num_requests=3, min_output_tokens=5, max_output_tokens=9).requests()
    assert workload.items() == wanted
    report = bench_serve(server.url, workload, warmup=0)
    system = next(iter(report["systems"].values()))
    assert system["completed"] == 3 and system["output_tokens"] == sum(n for _, n in wanted)
    with pytest.raises(ValueError, match="Unknown workload 'nope'"):
        Workload(name="nope")
