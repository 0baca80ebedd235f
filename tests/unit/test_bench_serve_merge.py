"""`labkit bench serve --json` into an existing file compares servers on the same workload."""
from __future__ import annotations

import pytest

from labkit.bench.serve_bench import merge_reports

pytestmark = pytest.mark.unit


def test_merging_a_second_server_adds_ratios_and_refuses_another_workload():
    def report(name, tps, p99, requests=8):
        return {"machine": {}, "workload": {"requests": requests, "url": name}, "ratios": {},
                "systems": {name: {"output_tokens_per_s": tps, "ttft_p99_s": p99}}}

    merged = merge_reports(report("transformers-serve", 20.0, 4.0), report("labkit", 60.0, 1.0))
    assert set(merged["systems"]) == {"transformers-serve", "labkit"}
    assert merged["ratios"] == {"labkit_vs_transformers-serve_output_tokens_per_s": 3.0,
                                "labkit_vs_transformers-serve_ttft_p99": 0.25}
    with pytest.raises(ValueError):
        merge_reports(report("a", 1.0, 1.0), report("labkit", 1.0, 1.0, requests=9))


def test_report_names_a_tail_of_fewer_than_a_hundred_samples_max():
    from labkit.bench.serve_bench import Result, format_report, summarise
    from labkit.monitor.slo import SLO

    results = [Result(ok=True, output_tokens=4, ttft_s=0.1 * (i + 1), e2e_s=0.5 + 0.1 * i, itl_s=[0.02] * 3)
               for i in range(40)]
    summary = summarise(results, wall_s=10.0, slo=SLO())
    assert summary["ttft_samples"] == 40 and summary["ttft_max_s"] == pytest.approx(4.0)
    text = format_report({"systems": {"labkit": summary}})
    assert "TTFT        mean 2050 ms, p50 2050 ms, max 4000 ms" in text
    assert "ITL         mean 20 ms, p50 20 ms, p99 20 ms" in text  # 120 inter-token gaps: a p99 is a p99
    assert "end-to-end  mean 2450 ms, p50 2450 ms, max 4400 ms" in text
