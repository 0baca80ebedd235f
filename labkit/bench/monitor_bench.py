"""`labkit bench monitor`: what monitoring costs the engine. The engine benchmark's workload runs several
times in one process, alternately without monitoring (nobody subscribed: the engine publishes nothing) and
with all of it on (rolling statistics and the Prometheus metrics subscribed, a watcher reading a snapshot and
rendering /metrics once a second, as a dashboard plus a scrape would). Runs alternate (off, on, on, off, ...)
so a drift in machine load falls on both sides; the ratio of the medians is the figure. On a shared machine
wall-clock tokens/s swings with other people's work, so tokens per CPU-second of this process (every thread:
the engine, torch's workers and the monitor's own) is reported too: it is what monitoring adds in work.
"""
from __future__ import annotations

import os
import statistics
import time

from ..config import EngineConfig
from .engine_workload import EngineWorkload


def _run(llm, prompts, params) -> tuple[float, float, int]:
    started, cpu = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return wall, cpu, sum(len(o.token_ids) for o in outs)


def publish_cost_us(events: int = 20_000) -> dict:
    """Microseconds per publish with the full monitor subscribed: a step, and a finished 64-token request."""
    from ..monitor import EventBus, RequestFinished, RollingStats, ServingMetrics, StepStats

    bus = EventBus()
    RollingStats().attach(bus)
    ServingMetrics(bus)
    step = StepStats("engine", batch_size=32, decode_tokens=32, running=32, kv_usage=0.2, output_tokens=32)
    finished = RequestFinished("engine", finish_reason="length", prompt_tokens=40, output_tokens=64, queue_s=0.01,
                               ttft_s=0.1, e2e_s=2.0, itl_s=(0.03,) * 63)
    out = {}
    for name, event in (("step_us", step), ("finished_request_us", finished)):
        started = time.perf_counter()
        for _ in range(events):
            bus.publish(event)
        out[name] = round((time.perf_counter() - started) / events * 1e6, 2)
    return out


def bench_monitor(model: str = "smollm2-135m-instruct", requests: int = 32, rounds: int = 3, seed: int = 0,
                  dtype: str = "bfloat16", output_tokens: tuple[int, int] = (16, 128), cost_events: int = 20_000,
                  log=print) -> dict:
    from ..engine import LLM, SamplingParams
    from ..models import load_model
    from ..monitor import LocalSource, ServingMetrics, Watcher
    from .engine_bench import machine

    loaded = load_model(model, device="cpu", dtype=dtype, progress=False)
    workload = EngineWorkload(num_requests=requests, min_output_tokens=output_tokens[0],
                              max_output_tokens=output_tokens[1], seed=seed)
    chats, lengths = zip(*workload.requests())
    params = [SamplingParams(temperature=0, max_tokens=n, min_tokens=n, ignore_eos=True) for n in lengths]
    log(f"workload: {requests} chat requests, {sum(lengths)} output tokens, {loaded.name} {dtype}; "
        f"{rounds} rounds of (off, on) alternating")
    runs: dict[str, list[float]] = {"off": [], "on": []}
    per_cpu_s: dict[str, list[float]] = {"off": [], "on": []}
    load: list[float] = []
    accounted: list[float] = []  # per "on" run: the monitor's measured work as a share of the run's wall time
    cost = publish_cost_us(cost_events)
    with LLM(loaded.model, loaded.tokenizer, EngineConfig()) as llm:
        _run(llm, list(chats), params)  # warm-up: one whole untimed run, so neither side pays for first shapes
        for index in range(rounds):
            for mode in (("off", "on") if index % 2 == 0 else ("on", "off")):
                watcher = source = None
                if mode == "on":
                    source = LocalSource(llm)
                    metrics = ServingMetrics()
                    unsubscribe = metrics.attach(llm.bus)
                    watcher = Watcher(source, lambda _s, m=metrics: m.render(), interval_s=1.0).start()
                steps_before = llm.engine.num_steps
                wall, cpu, tokens = _run(llm, list(chats), params)
                if watcher is not None:
                    watcher.stop()
                    steps = llm.engine.num_steps - steps_before
                    started = time.perf_counter()
                    for _ in range(5):  # one watcher tick with the run's events in the window: read + render
                        metrics.render(), source.read()
                    tick_s = (time.perf_counter() - started) / 5
                    publish_s = (steps * cost["step_us"] + len(chats) * cost["finished_request_us"]) / 1e6
                    accounted.append(100 * (publish_s / wall + tick_s / 1.0))
                    source.close()
                    unsubscribe()
                assert not llm.bus.has_subscribers, "a subscription outlived its run"
                runs[mode].append(tokens / wall)
                per_cpu_s[mode].append(tokens / cpu)
                load.append(os.getloadavg()[0])
                log(f"  round {index + 1} {mode:>3}: {tokens / wall:7.1f} tok/s ({wall:.2f} s), {tokens / cpu:6.1f} "
                    f"tokens per CPU-second, load {load[-1]:.2f}")
    off, on = statistics.median(runs["off"]), statistics.median(runs["on"])
    cpu_off, cpu_on = statistics.median(per_cpu_s["off"]), statistics.median(per_cpu_s["on"])
    pairs = [b / a for a, b in zip(runs["off"], runs["on"])]
    return {"machine": machine(), "workload": {"requests": requests, "output_tokens": sum(lengths), "seed": seed,
                                               "model": loaded.name, "dtype": dtype, "rounds": rounds},
            "systems": {mode: {"output_tokens_per_s": round(statistics.median(runs[key]), 1),
                               "runs": [round(r, 1) for r in runs[key]],
                               "output_tokens_per_cpu_s": round(statistics.median(per_cpu_s[key]), 1),
                               "cpu_runs": [round(r, 1) for r in per_cpu_s[key]]}
                        for mode, key in (("monitor-off", "off"), ("monitor-on", "on"))},
            "ratios": {"on_vs_off": round(on / off, 4), "overhead_perc": round(100 * (1 - on / off), 2),
                       "pair_ratios": [round(p, 4) for p in pairs],
                       "cpu_on_vs_off": round(cpu_on / cpu_off, 4),
                       "cpu_overhead_perc": round(100 * (1 - cpu_on / cpu_off), 2)},
            "publish_cost": cost, "accounted_overhead_perc": [round(a, 3) for a in accounted],
            "load_average_1m": [round(x, 2) for x in load]}


def format_report(report: dict) -> str:
    s, r = report["systems"], report["ratios"]
    return "\n".join([
        f"monitor off: {s['monitor-off']['output_tokens_per_s']:.1f} tok/s (median of {s['monitor-off']['runs']})",
        f"monitor on:  {s['monitor-on']['output_tokens_per_s']:.1f} tok/s (median of {s['monitor-on']['runs']})",
        f"on/off: {r['on_vs_off']:.4f} = {r['overhead_perc']:+.2f}% overhead; per pair {r['pair_ratios']}",
        f"tokens per CPU-second: off {s['monitor-off']['output_tokens_per_cpu_s']:.1f}, on "
        f"{s['monitor-on']['output_tokens_per_cpu_s']:.1f}: {r['cpu_overhead_perc']:+.2f}% more CPU per token with "
        f"monitoring",
        f"publish cost with the monitor subscribed: {report['publish_cost']['step_us']} us per step, "
        f"{report['publish_cost']['finished_request_us']} us per finished 64-token request; the monitor's "
        f"measured work (publishes + a 1 Hz read and render) = {report['accounted_overhead_perc']} % of each on-run",
        f"load average (1 min) after each run: {report['load_average_1m']}"])
