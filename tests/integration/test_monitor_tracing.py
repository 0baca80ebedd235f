"""Request traces (OpenTelemetry over OTLP/HTTP) and ECS logs, read back from a stand-in collector on loopback
and from the access logs: one trace from the client through the router to the replica's engine phases."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import openai
import pytest
from otlp_receiver import OTLPReceiver

import labkit
from labkit import RouterConfig, ServerConfig
from labkit.route import route

pytestmark = pytest.mark.integration
TRACE_ID, CLIENT_SPAN = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
ECS_FIELDS = ("@timestamp", "log.level", "ecs.version", "message")


def read_lines(path) -> list[dict]:
    lines = [json.loads(line) for line in open(path).read().splitlines()]
    for line in lines:
        assert all(field in line for field in ECS_FIELDS), line
        assert line["@timestamp"].endswith("Z") and line["log.level"] == "info"
    return lines


def phases_of(spans: list[dict], parent: dict) -> dict[int, list[dict]]:
    """Choice index -> its queue, prefill and decode spans in time order, each under `parent`."""
    out: dict[int, list[dict]] = {}
    for span in sorted((s for s in spans if s["parent_id"] == parent["span_id"]), key=lambda s: s["start_ns"]):
        out.setdefault(span["attributes"]["labkit.choice"], []).append(span)
    return out


def assert_contiguous_phases(phases: list[dict], parent: dict) -> None:
    assert [p["name"] for p in phases] == ["queue", "prefill", "decode"]
    for before, after in zip(phases, phases[1:]):
        assert before["end_ns"] == after["start_ns"]
    # built after the fact from the engine's clock: inside the request's span (a millisecond of rounding)
    assert parent["start_ns"] - 1_000_000 <= phases[0]["start_ns"] and phases[-1]["end_ns"] <= parent["end_ns"]


@pytest.fixture(scope="module")
def traced(tiny_model_dirs, tmp_path_factory):
    """A traced server with an access log behind a traced router with its own, each exporting to a collector
    of its own; spans wait in the batch until stopped (a long delay), so stopping must flush them."""
    root = tmp_path_factory.mktemp("traced")
    with OTLPReceiver() as server_spans, OTLPReceiver() as router_spans, pytest.MonkeyPatch.context() as env:
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
        server = labkit.serve(tiny_model_dirs["llama"], device="cpu", dtype="float32",
                              config=ServerConfig(access_log=str(root / "server.jsonl"),
                                                  otlp_traces_endpoint=server_spans.url))
        router = route([server.url], config=RouterConfig(access_log=str(root / "router.jsonl"),
                                                         otlp_traces_endpoint=router_spans.url))
        client = openai.OpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)
        chat = client.chat.completions.create(
            model=server.app.state.services.llm.name, messages=[{"role": "user", "content": "hi"}], n=2,
            max_tokens=5, temperature=0.5, top_p=0.9, extra_body={"ignore_eos": True},
            extra_headers={"traceparent": TRACEPARENT})
        httpx.get(router.url + "/health")
        httpx.get(server.url + "/metrics")
        untraced_client = httpx.post(router.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2})
        assert server_spans.spans == [] and router_spans.spans == []  # still batched
        router.stop()
        server.stop()
        yield {"chat": chat, "server": server_spans.spans, "router": router_spans.spans,
               "server_log": read_lines(root / "server.jsonl"), "router_log": read_lines(root / "router.jsonl"),
               "untraced": untraced_client}


def test_one_trace_from_the_client_through_the_router_to_the_engine_phases(traced):
    [router_span] = [s for s in traced["router"] if s["trace_id"] == TRACE_ID]
    assert router_span["parent_id"] == CLIENT_SPAN and router_span["service"] == "labkit-router"
    assert router_span["name"] == "POST /v1/chat/completions"
    assert router_span["attributes"]["http.response.status_code"] == 200
    assert router_span["attributes"]["labkit.replica"] == "static-0"
    [server_span] = [s for s in traced["server"] if s["parent_id"] == router_span["span_id"]]
    assert server_span["trace_id"] == TRACE_ID and server_span["service"] == "labkit-server"
    chat, attributes = traced["chat"], server_span["attributes"]
    assert server_span["name"] == f"chat {chat.model}"
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == chat.model
    assert attributes["gen_ai.request.max_tokens"] == 5 and attributes["gen_ai.request.choice.count"] == 2
    assert attributes["gen_ai.request.temperature"] == 0.5 and attributes["gen_ai.request.top_p"] == 0.9
    assert attributes["gen_ai.response.finish_reasons"] == ["length", "length"]
    assert attributes["gen_ai.usage.input_tokens"] == chat.usage.prompt_tokens
    assert attributes["gen_ai.usage.output_tokens"] == chat.usage.completion_tokens == 10
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == chat.usage.prompt_tokens_details.cached_tokens
    assert 0 < attributes["gen_ai.latency.time_to_first_token"] < attributes["gen_ai.latency.e2e"]
    phases = phases_of(traced["server"], server_span)
    assert sorted(phases) == [0, 1]
    for choice in phases.values():
        assert_contiguous_phases(choice, server_span)


def test_the_access_logs_of_router_and_replica_carry_the_trace(traced):
    [router_line] = [line for line in traced["router_log"] if line.get("trace", {}).get("id") == TRACE_ID]
    [server_line] = [line for line in traced["server_log"] if line.get("trace", {}).get("id") == TRACE_ID]
    [router_span] = [s for s in traced["router"] if s["trace_id"] == TRACE_ID]
    [server_span] = [s for s in traced["server"] if s["parent_id"] == router_span["span_id"]]
    assert router_line["span"]["id"] == router_span["span_id"] and server_line["span"]["id"] == server_span["span_id"]
    assert router_line["http"]["request"]["id"] == server_line["http"]["request"]["id"]  # the router's, passed on
    assert router_line["service"]["name"] == "labkit-router" and server_line["service"]["name"] == "labkit-server"
    assert router_line["labkit"]["replica"] == "static-0"
    assert server_line["labkit"]["completion_tokens"] == 10 and server_line["labkit"]["finish_reason"] == "length"
    assert server_line["labkit"]["cached_tokens"] == traced["chat"].usage.prompt_tokens_details.cached_tokens
    assert server_line["http"]["response"]["status_code"] == 200 and server_line["url"]["path"] == "/v1/chat/completions"
    # Both timed; not compared: the replica may log its end a moment after the router has relayed the last byte.
    assert server_line["event"]["duration"] > 0 and router_line["event"]["duration"] > 0


def test_a_request_without_traceparent_starts_its_own_trace_and_probes_are_not_traced(traced):
    request_id = traced["untraced"].headers["x-request-id"]
    [line] = [line for line in traced["router_log"] if line["http"]["request"]["id"] == request_id]
    [router_span] = [s for s in traced["router"] if s["span_id"] == line["span"]["id"]]
    assert router_span["parent_id"] == "" and router_span["trace_id"] not in (TRACE_ID, "0" * 32)
    [server_span] = [s for s in traced["server"] if s["parent_id"] == router_span["span_id"]]
    assert server_span["name"].startswith("text_completion ")
    names = {s["name"] for s in traced["server"] + traced["router"]}
    assert not names & {"GET /health", "GET /metrics"}
    assert any(line["url"]["path"] == "/health" and "trace" not in line for line in traced["router_log"])


def child_command_lines(pid: int) -> list[str]:
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    return [open(f"/proc/{child}/cmdline").read().replace("\0", " ") for child in children]


def test_labkit_up_traces_a_request_through_router_and_replica_and_logs_it_in_ecs(tiny_model_dirs, tmp_path):
    """The command line end to end: spans reach the collector from the router and a replica process (flushed as
    they stop), one trace; both write the shared access log; the level comes from LABKIT_LOG_LEVEL."""
    log = tmp_path / "access.jsonl"
    with OTLPReceiver() as collector:
        process = subprocess.Popen(
            [sys.executable, "-m", "labkit.cli", "up", "--model", tiny_model_dirs["llama"], "--replicas", "2",
             "--port", "0", "--device", "cpu", "--dtype", "float32", "--otlp-traces-endpoint", collector.url,
             "--access-log", str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "LABKIT_LOG_LEVEL": "debug"})
        try:
            line = process.stdout.readline()
            found = re.search(r"on (http://\S+) \(policy", line)
            assert found, line + (process.stderr.read() if process.poll() is not None else "")
            assert all("--log-level debug" in command for command in child_command_lines(process.pid))
            body = {"prompt": "hi", "max_tokens": 3, "ignore_eos": True, "stream": True}
            with httpx.stream("POST", found.group(1) + "/v1/completions", json=body, timeout=30,
                              headers={"traceparent": TRACEPARENT}) as response:
                assert response.status_code == 200 and response.read().endswith(b"data: [DONE]\n\n")
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        spans = [s for s in collector.spans if s["trace_id"] == TRACE_ID]
    [router_span] = [s for s in spans if s["service"] == "labkit-router"]
    [server_span] = [s for s in spans if s["parent_id"] == router_span["span_id"]]
    assert router_span["parent_id"] == CLIENT_SPAN and server_span["service"] == "labkit-server"
    assert server_span["name"].startswith("text_completion ")
    assert server_span["attributes"]["gen_ai.request.stream"] is True
    assert server_span["attributes"]["gen_ai.usage.output_tokens"] == 3
    assert_contiguous_phases(phases_of(spans, server_span)[0], server_span)
    traced = [line for line in read_lines(log) if line.get("trace", {}).get("id") == TRACE_ID]
    assert {line["service"]["name"]: line["span"]["id"] for line in traced} == {
        "labkit-router": router_span["span_id"], "labkit-server": server_span["span_id"]}
    assert len({line["process"]["pid"] for line in traced}) == 2  # two processes, one file


def test_labkit_serve_logs_in_ecs_with_the_trace_at_the_flag_s_level_over_the_environment_s(tiny_model_dirs):
    with OTLPReceiver() as collector:
        process = subprocess.Popen(
            [sys.executable, "-m", "labkit.cli", "serve", "--model", tiny_model_dirs["llama"], "--encoder", "none",
             "--port", "0", "--device", "cpu", "--dtype", "float32", "--no-tune", "--log-level", "WARNING",
             "--otlp-traces-endpoint", collector.url.removesuffix("/v1/traces")],  # a collector's base URL works
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "LABKIT_LOG_LEVEL": "error"})
        try:
            found = re.search(r"on (http://\S+) \(", process.stdout.readline())
            assert found, process.stderr.read() if process.poll() is not None else "no URL announced"
            response = httpx.post(found.group(1) + "/v1/completions", headers={"traceparent": TRACEPARENT},
                                  json={"prompt": "hi", "max_tokens": 2, "frobnicate": 1})  # an unknown field: a warning
            assert response.status_code == 200
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
        assert process.returncode == 0 and collector.spans
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [warning] = [r for r in records if "frobnicate" in r["message"]]
    assert all(field in warning for field in ECS_FIELDS) and warning["log.level"] == "warning"
    assert warning["log"]["logger"] == "labkit.server" and warning["trace"]["id"] == TRACE_ID
