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
