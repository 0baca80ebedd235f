"""`labkit serve` as a user runs it: a subprocess on loopback that drains on SIGTERM and exits cleanly."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata

import httpx
import pytest
from loopback import metric

pytestmark = pytest.mark.integration


def _start(args: list[str], env: dict | None = None) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "labkit.cli", "serve", "--port", "0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    deadline = time.monotonic() + 120
    process.startup_output = ""
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        process.startup_output += line
        if not line and process.poll() is not None:
            break
        match = re.search(r"serving .* on (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1)
    process.kill()
    raise AssertionError(f"labkit serve did not start: {process.stdout.read()}")


def test_sigterm_lets_the_in_flight_stream_finish_then_exits_0(tiny_model_dirs):
    process, url = _start(["--model", tiny_model_dirs["llama"], "--encoder", "none", "--dtype", "float32"])
    result = {}

    def stream():
        body = {"prompt": "tell me everything", "max_tokens": 480, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            result["lines"] = [line for line in r.iter_lines() if line.startswith("data:")]
        result["ended"] = time.monotonic()

    try:
        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(0.3)  # the request is in flight
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        worker.join(60)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "server stopped" in output and "Traceback" not in output
    assert result["ended"] > signalled  # it was still streaming when the signal came
    assert result["lines"][-1] == "data: [DONE]"
    assert json.loads(result["lines"][-2][5:])["usage"]["completion_tokens"] == 480


def test_api_key_from_the_environment(tiny_model_dirs):
    from labkit.openmp import tcmalloc_path

    process, url = _start(["--model", tiny_model_dirs["gpt2"], "--encoder", "none"], env={"LABKIT_API_KEY": "k1"})
    try:
        with open(f"/proc/{process.pid}/maps") as maps:  # restarted once, same pid, with the faster allocator
            assert (tcmalloc_path() or "no tcmalloc here") in maps.read() or not tcmalloc_path()
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "Traceback" not in output


def test_vllm_flags_name_and_bound_the_served_model(tiny_model_dirs):
    process, url = _start([tiny_model_dirs["llama"], "--served-model-name", "tiny-chat", "--max-model-len", "48",
                           "--dtype", "float32", "--no-tune"])
    try:
        models = httpx.get(url + "/v1/models").json()["data"]
        fits = httpx.post(url + "/v1/completions", json={"model": "tiny-chat", "prompt": "hello", "max_tokens": 4,
                                                            "ignore_eos": True})
        too_long = httpx.post(url + "/v1/completions", json={"model": "tiny-chat", "prompt": "hello", "max_tokens": 48})
        metrics = httpx.get(url + "/metrics").text
        openapi = httpx.get(url + "/openapi.json").json()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert [(m["id"], m["max_model_len"]) for m in models] == [("tiny-chat", 48)]  # no encoder unless asked
    assert fits.status_code == 200 and fits.json()["model"] == "tiny-chat"
    assert too_long.status_code == 400 and "48-token context" in too_long.json()["error"]["message"]
    assert metric(metrics, 'labkit:generation_tokens_total{model_name="tiny-chat"}') == 4
    assert openapi["info"]["version"] == metadata.version("labkit")
    assert process.returncode == 0 and "Traceback" not in output


def test_unknown_model_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "labkit.cli", "serve", "--model", "no-such-model-here", "--port",
                             "0"], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("labkit: error:")
    assert "Traceback" not in result.stderr


def test_optimize_serves_the_variant_and_refuses_onnx_before_loading(tiny_model_dirs):
    process, url = _start(["--model", tiny_model_dirs["llama"], "--encoder", "none", "--dtype", "float32",
                           "--optimize", "torch-int8"])
    try:
        reply = httpx.post(url + "/v1/completions", json={"prompt": "hello", "max_tokens": 5, "ignore_eos": True},
                           timeout=60)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 5
    assert "(causal-lm, torch-int8," in process.startup_output and "Traceback" not in output

    refused = subprocess.run([sys.executable, "-m", "labkit.cli", "serve", "--optimize", "onnx"],
                             capture_output=True, text=True, timeout=60, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert refused.returncode == 2 and "cannot be served by the engine" in refused.stderr
    assert refused.stderr.count("\n") == 1
