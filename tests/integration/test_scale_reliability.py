"""Replicas as real processes: a replica killed mid-load, the pool healing, and the autoscaler following a
load step up and back down. Tiny random models, so each replica starts in seconds."""
from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from loopback import metric, wait_for

from labkit.config import ScaleConfig
from labkit.monitor.events import ReplicaCount, ScaleDecision
from labkit.route import route
from labkit.scale import LoadPattern, ReplicaPool, start_load, up

pytestmark = pytest.mark.integration

SERVE_ARGS = ["--device", "cpu", "--dtype", "float32"]




def no_orphans(pids):
    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone in all but name
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1].startswith("Z")
    return all(gone(pid) for pid in pids)


def last_time_above(result, level):
    """The last moment (seconds from the load's start) more than `level` requests were in flight."""
    edges = sorted([(r.sent_s, 1) for r in result.results] + [(r.sent_s + r.latency_s, -1) for r in result.results])
    count, last = 0, 0.0
    for t, step in edges:
        count += step
        if count > level or (step < 0 and count + 1 > level):
            last = t
    return last


def mixed_request(i, rng):
    if i % 2:
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 48,
                                        "ignore_eos": True, "stream": True}
    return "/v1/completions", {"prompt": f"Request {i} says", "max_tokens": 48, "ignore_eos": True}


def test_killing_a_replica_mid_load_every_request_ends_cleanly_and_the_pool_heals(tiny_model_dirs):
    config = ScaleConfig(min_replicas=2, max_replicas=2, interval_s=0.2)
    pool = ReplicaPool(tiny_model_dirs["llama"], 2, config=config, serve_args=SERVE_ARGS, name="kill").start()
    pids = []
    try:
        with route(pool, policy="round_robin") as router:
            run = start_load(router.url, LoadPattern("constant", rate=25, duration_s=8), request=mixed_request,
                             timeout_s=30)
            assert wait_for(lambda: len(run.results) >= 50, 30)
            victim = pool.ready()[0]
            pids = [r.pid for r in pool.replicas()]
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            assert wait_for(lambda: victim not in pool.ready(), 5, step=0.01)
            noticed_s = time.monotonic() - killed
            result = run.wait(90)
            retries = metric(httpx.get(router.url + "/metrics").text, "labkit:router_retries_total")
            assert wait_for(lambda: len(pool.ready()) == 2 and victim not in pool.replicas(), 60)
        summary = result.summary()
        print(f"\nreplica kill: noticed in {noticed_s * 1000:.0f} ms; {summary['ok']} ok, {summary['errors']} clean "
              f"errors, statuses {summary['statuses']}, {retries:.0f} retried, healed with {pool.replaced} replacement(s)")
        assert len(result.results) == 200  # none hangs: each has an outcome
        for r in result.results:
            assert r.latency_s < 30
            assert r.ok or (r.status in (200, 429, 502, 503) and r.error), r  # success, or an error that says so
        assert summary["ok"] >= 100, {r.error for r in result.results if not r.ok}  # most never notice
        assert noticed_s < 1.0
        assert pool.replaced >= 1
        pids += [r.pid for r in pool.replicas()]
    finally:
        pool.stop()
    assert wait_for(lambda: no_orphans(pids), 10)


def test_a_load_step_scales_up_within_the_delay_and_back_down_after(tiny_model_dirs):
    scale = ScaleConfig(target_ongoing_requests=1, max_queue_per_replica=None, upscale_delay_s=1.0,
                        downscale_delay_s=3.0, interval_s=0.25)
    events = []
    lab = up(tiny_model_dirs["llama"], min_replicas=1, max_replicas=2, scale=scale, serve_args=SERVE_ARGS)
    lab.bus.subscribe(events.append, ScaleDecision, ReplicaCount)
    pids = [r.pid for r in lab.pool.replicas()]
    try:
        body = {"prompt": "Load", "max_tokens": 300, "ignore_eos": True}  # long enough to keep both replicas busy
        started = time.monotonic()
        run = start_load(lab.url, LoadPattern("constant", rate=5, duration_s=60),
                         request=lambda i, rng: ("/v1/completions", body), timeout_s=60)
        assert wait_for(lambda: lab.pool.target == 2, 30), lab.autoscaler.history[-3:]
        decided_s = time.monotonic() - started
        assert wait_for(lambda: len(lab.pool.ready()) == 2, 60)
        ready_s = time.monotonic() - started
        pids += [r.pid for r in lab.pool.replicas()]
        run.stop()
        result = run.wait(90)
        ended = time.monotonic()
        assert wait_for(lambda: lab.pool.target == 1 and len(lab.pool.ready()) == 1, 60)
        down_s = time.monotonic() - ended
        print(f"\nautoscaler: decided 1->2 at {decided_s:.1f} s after the step, 2nd replica ready at {ready_s:.1f} s, "
              f"back to 1 {down_s:.1f} s after the load ended; load {result.summary()['ok']} ok of "
              f"{len(result.results)}")
        ups = [e for e in events if isinstance(e, ScaleDecision) and e.desired > e.current]
        downs = [e for e in events if isinstance(e, ScaleDecision) and e.desired < e.current]
        assert len(ups) == 1 and len(downs) == 1  # one decision each way: no flapping
        busy_until = last_time_above(result, lab.autoscaler.config.target_ongoing_requests) + run.t0
        assert downs[0].t - busy_until >= scale.downscale_delay_s - 0.5  # not before the downscale delay
        assert downs[0].t > run.t0 + max(r.sent_s for r in result.results)  # nor while the load still came
        assert any(isinstance(e, ReplicaCount) and e.replicas == 2 for e in events)
        assert metric(httpx.get(lab.url + "/metrics").text, "labkit:replicas") == 1
        assert all(r.ok for r in result.results), [r for r in result.results if not r.ok][:3]
    finally:
        lab.stop()
    assert wait_for(lambda: no_orphans(pids), 10)
