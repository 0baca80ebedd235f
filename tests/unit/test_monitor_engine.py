"""The engine publishes what it does to its bus while someone listens, and nothing when nobody does."""
from __future__ import annotations

import pytest

import labkit
from labkit import LLM, SamplingParams
from labkit.monitor import EventBus, QueueDepth, RequestFinished, StepStats

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tiny(tiny_model_dirs):
    return labkit.load_model(tiny_model_dirs["llama"], device="cpu", dtype="float32", progress=False)


def test_steps_and_finished_requests_are_published_with_their_timings(tiny):
    bus = EventBus()
    events = []
    bus.subscribe(events.append)
    with LLM(tiny, bus=bus, max_num_seqs=4) as llm:
        assert llm.bus is bus
        lengths = [3, 5, 8, 2, 6, 4]
        outs = llm.generate(["a b c"] * len(lengths), [SamplingParams(max_tokens=n, ignore_eos=True) for n in lengths])
        last_step = [e for e in events if isinstance(e, StepStats)][-1]
        request = llm.engine.add_request([1, 2, 3], SamplingParams(max_tokens=50, ignore_eos=True))
        llm.engine.step()
        llm.engine.abort(request.request_id)
    done = [e for e in events if isinstance(e, RequestFinished)]
    steps = [e for e in events if isinstance(e, StepStats)]
    assert sorted(e.output_tokens for e in done if e.finish_reason == "length") == sorted(lengths)
    assert [e.finish_reason for e in done].count("abort") == 1
    assert sum(s.output_tokens for s in steps) == sum(lengths) + 1
    assert max(s.batch_size for s in steps) == 4 and all(s.duration_s > 0 for s in steps)
    assert last_step.running == 0 and last_step.kv_usage == 0.0  # the step that finished the batch
    assert isinstance(events[-1], QueueDepth) and events[-1].running == 0 and events[-1].kv_usage == 0.0  # abort
    timed = {e.e2e_s for e in done if e.finish_reason == "length"}
    assert timed == {o.metrics.e2e_latency_s for o in outs}
    assert all(len(e.itl_s) == e.output_tokens - 1 for e in done if e.finish_reason == "length")


def test_unobserved_engine_builds_no_events(tiny):
    bus = EventBus()

    def refuse(event):
        raise AssertionError("published with nobody listening")

    bus.publish = refuse
    with LLM(tiny, bus=bus) as llm:
        out = llm.generate("hello", SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3


def test_local_source_reads_an_llm(tiny):
    with LLM(tiny) as llm:
        source = labkit.monitor.source(llm, window_s=60)
        llm.generate(["x"] * 5, SamplingParams(max_tokens=4, ignore_eos=True))
        snap = source.read()
        source.close()
        assert not llm.bus.has_subscribers
    assert snap.requests_total == 5 and snap.tokens_total == 20 and snap.latency.count == 5
    assert snap.tokens_per_s > 0 and snap.ttft.p99 >= snap.ttft.p50 > 0 and snap.memory is not None


def test_bench_monitor_runs_both_sides_and_reports_the_ratio(tiny_model_dirs):
    from labkit.bench.monitor_bench import bench_monitor, format_report

    report = bench_monitor(tiny_model_dirs["llama"], requests=2, rounds=1, dtype="float32",
                           output_tokens=(4, 8), cost_events=500, log=lambda _: None)
    on, off = report["systems"]["monitor-on"], report["systems"]["monitor-off"]
    assert len(on["runs"]) == len(off["runs"]) == 1 and min(on["runs"] + off["runs"]) > 0
    assert report["ratios"]["on_vs_off"] == pytest.approx(on["output_tokens_per_s"] / off["output_tokens_per_s"],
                                                         rel=1e-2)
    assert report["publish_cost"]["step_us"] > 0 and "overhead" in format_report(report)
