"""The same replica app on Ray Serve (local Ray instance on loopback). Skipped unless the optional `ray`
extra is installed; benchmarks/ray_serve.py is the longer, documented run (autoscaling under load)."""
from __future__ import annotations

import socket

import httpx
import pytest

from labkit.config import RouterConfig, ScaleConfig

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")


def test_a_tiny_model_on_ray_serve_answers_like_labkit_serve(tiny_model_dirs):
    from labkit.scale.ray_backend import up_on_ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with up_on_ray(tiny_model_dirs["llama"], scale=ScaleConfig(min_replicas=1, max_replicas=1),
                   router=RouterConfig(port=port), device="cpu", dtype="float32", ready_timeout_s=240) as lab:
        assert lab.replicas() == 1
        reply = httpx.post(lab.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=60)
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3
        with httpx.stream("POST", lab.url + "/v1/completions", timeout=60,
                          json={"prompt": "hi", "max_tokens": 3, "stream": True}) as stream:
            assert [line for line in stream.iter_lines() if line.startswith("data:")][-1] == "data: [DONE]"
        bad = httpx.post(lab.url + "/v1/completions", json={"prompt": "hi", "max_tokens": -1}, timeout=60)
        assert bad.status_code in (400, 422) and "error" in bad.json()
        assert "labkit:num_requests_running" in httpx.get(lab.url + "/metrics").text
