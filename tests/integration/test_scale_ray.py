"""The default model on Ray Serve (`labkit up --backend ray`): a local Ray instance on loopback scaling 1 -> 2 -> 1
under load, and a two-node Ray cluster on this one machine (a head and a worker `ray start`, each with its own
resource) with a replica on each node. `make test` installs the `ray` extra, so these run there; Ray's own
start-up (a few processes per node) is most of their time. benchmarks/ray_serve.py is the longer run."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from loopback import wait_for

from labkit.config import RouterConfig, ScaleConfig
from labkit.scale import LoadPattern, start_load

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray", reason="ray is the optional `ray` extra (make test installs it)")

RAY = str(Path(sys.executable).with_name("ray"))
MODEL = "smollm2-135m-instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_stopped_after():
    """Whatever happens in the test, no Ray process outlives it."""
    yield
    subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def test_the_default_model_on_ray_serve_answers_like_labkit_serve_and_scales_1_2_1(ray_stopped_after, monkeypatch):
    from labkit.scale.ray_backend import up_on_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local instance of its own

    scale = ScaleConfig(min_replicas=1, max_replicas=2, target_ongoing_requests=1, upscale_delay_s=1,
                        downscale_delay_s=3, interval_s=0.5, threads_per_replica=1)
    started = time.monotonic()
    with up_on_ray(MODEL, scale=scale, router=RouterConfig(port=free_port()), device="cpu",
                   ready_timeout_s=240) as lab:
        ready_s = time.monotonic() - started
        assert lab.replicas() == 1
        reply = httpx.post(lab.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        with httpx.stream("POST", lab.url + "/v1/chat/completions", timeout=60, json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}) as stream:
            assert [line for line in stream.iter_lines() if line.startswith("data:")][-1] == "data: [DONE]"
        bad = httpx.post(lab.url + "/v1/completions", json={"prompt": "hi", "max_tokens": -1}, timeout=60)
        assert bad.status_code == 400 and "error" in bad.json()
        assert "labkit:num_requests_running" in httpx.get(lab.url + "/metrics", timeout=10).text

        body = {"prompt": "Once upon a time", "max_tokens": 32, "ignore_eos": True}
        load_started = time.monotonic()
        run = start_load(lab.url, LoadPattern("constant", rate=3, duration_s=90),
                         request=lambda i, rng: ("/v1/completions", body), timeout_s=120)
        assert wait_for(lambda: lab.replicas() == 2, 90, step=0.5), "Ray Serve never ran a second replica"
        up_s = time.monotonic() - load_started
        time.sleep(3)  # both replicas take requests for a while
        run.stop()
        result = run.wait(120)
        ended = time.monotonic()
        assert wait_for(lambda: lab.replicas() == 1, 60, step=0.5), "Ray Serve kept two replicas after the load"
        down_s = time.monotonic() - ended
        assert result.results and all(r.ok for r in result.results), [r for r in result.results if not r.ok][:3]
    print(f"\nRay Serve: ready in {ready_s:.1f} s, 2 replicas {up_s:.1f} s into the load, back to 1 {down_s:.1f} s "
          f"after it; {len(result.results)} requests, all answered")


def _ray_start(*args: str) -> None:
    done = subprocess.run([RAY, "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                           "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                           # two nodes on one machine: each agent on its own port, not the default one
                           "--dashboard-agent-listen-port", str(free_port()),
                           "--dashboard-agent-grpc-port", str(free_port()),
                           "--runtime-env-agent-port", str(free_port()),
                           "--metrics-export-port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_two_node_ray_cluster_gets_a_replica_on_each_node(ray_stopped_after, monkeypatch):
    from labkit.scale.ray_backend import up_on_ray

    gcs = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    _ray_start("--head", "--port", gcs.rsplit(":", 1)[1], "--include-dashboard", "false",
               "--resources", json.dumps({"node_a": 1}))
    _ray_start("--address", gcs, "--resources", json.dumps({"node_b": 1}))
    cluster_s = time.monotonic() - started
    monkeypatch.setenv("RAY_ADDRESS", gcs)  # as `labkit up --backend ray` finds a cluster
    scale = ScaleConfig(min_replicas=2, max_replicas=2, threads_per_replica=1)  # one CPU each: one per node
    with up_on_ray(MODEL, scale=scale, router=RouterConfig(port=free_port()), device="cpu",
                   ready_timeout_s=240) as lab:
        nodes = {node["NodeID"]: next(name for name in ("node_a", "node_b") if name in node["Resources"])
                 for node in ray.nodes() if node["Alive"]}
        assert sorted(nodes.values()) == ["node_a", "node_b"]
        assert wait_for(lambda: lab.replicas() == 2, 120, step=0.5)
        replicas = [actor for actor in ray._private.state.actors().values()
                    if actor["ActorClassName"].startswith("ServeReplica:labkit") and actor["State"] == "ALIVE"]
        assert sorted(nodes[actor["Address"]["NodeID"]] for actor in replicas) == ["node_a", "node_b"]
        for _ in range(4):  # the head's proxy reaches both replicas
            reply = httpx.post(lab.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
            assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
    print(f"\ntwo-node Ray cluster: both nodes up in {cluster_s:.1f} s, 2 replicas answering "
          f"{time.monotonic() - started:.1f} s after the first `ray start`")
