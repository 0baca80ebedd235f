"""labkit's own logs and the access log in Elastic Common Schema: the level from the flag or the environment,
trace ids on records written inside a span, the README's field table against real lines, and the Filebeat
configuration that ships the access log."""
from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from otlp_receiver import OTLPReceiver

from labkit.monitor.logs import ENV, configure_logging, log_level
from labkit.monitor.tracing import Tracing
from labkit.server.access_log import AccessLog, RequestContextMiddleware

ROOT = Path(__file__).resolve().parents[2]
ECS_FIELDS = ("@timestamp", "log.level", "ecs.version", "message")


def flat(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def test_the_flag_wins_over_the_environment_which_wins_over_info(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert log_level(None) == "info"
    monkeypatch.setenv(ENV, "ERROR")
    assert log_level(None) == "error" and log_level("debug") == "debug"
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(ValueError, match="LABKIT_LOG_LEVEL is 'loud'; choose one of: debug, info"):
        log_level(None)
    assert log_level("warning") == "warning"  # a good flag makes a bad variable irrelevant


@pytest.fixture
def labkit_logger():
    logger = logging.getLogger("labkit")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


def test_labkit_records_from_the_level_up_are_ecs_lines_with_the_current_trace(labkit_logger, capsys):
    configure_logging("warning")
    log = logging.getLogger("labkit.server")
    log.info("below the level")
    with TracerProvider().get_tracer("test").start_as_current_span("request") as span:
        log.warning("inside %s", "a span")
    log.error("outside")
    logging.getLogger("elsewhere").error("not labkit's")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["inside a span", "outside"]
    assert all(field in line for line in lines for field in ECS_FIELDS)
    assert [line["log.level"] for line in lines] == ["warning", "error"]
    assert lines[0]["trace"]["id"] == format(span.get_span_context().trace_id, "032x") and "trace" not in lines[1]


async def _serve(app, path: str) -> None:
    """One POST to `path` through the ASGI `app`."""
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "client": ("127.0.0.1", 5000)}
    await app(scope, receive, send)


def access_lines(tmp_path, tracing=None) -> list[dict]:
    """The access log of a generation and of a request a guard refused, as the middleware writes them."""
    async def route(scope, receive, send):  # sets what the generation route and the body limit set
        if scope["path"] == "/v1/completions":
            scope["state"]["log"].update(model="m", stream=False, prompt_tokens=3, cached_tokens=0,
                                         completion_tokens=2, ttft_ms=1.5, finish_reason="length")
            status = 200
        else:
            scope["state"]["labkit_error"], status = "body_too_large", 413
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    log = AccessLog(str(tmp_path / "access.jsonl"))
    app = RequestContextMiddleware(route, access_log=log, tracing=tracing)
    for path in ("/v1/completions", "/v1/embeddings"):
        asyncio.run(_serve(app, path))
    log.close()
    return [json.loads(line) for line in (tmp_path / "access.jsonl").read_text().splitlines()]


def test_access_lines_are_ecs_with_the_fields_the_readme_documents(tmp_path):
    with OTLPReceiver() as collector:
        tracing = Tracing(collector.url, "labkit-server")
        lines = access_lines(tmp_path, tracing)
        tracing.shutdown()
    assert all(field in line for line in lines for field in ECS_FIELDS)
    written = set().union(*(flat(line) for line in lines))
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("**Logs for ELK.**"):]
    documented = {name for row in re.findall(r"^\| (`.+?) \|", table, re.M) for name in re.findall(r"`([^`]+)`", row)}
    assert {"@timestamp", "trace.id", "error.code", "labkit.ttft_ms"} <= documented
    outside_labkit = {name for name in documented if not name.startswith("labkit.")}
    assert outside_labkit <= written, outside_labkit - written
    assert {n for n in written if n.startswith("labkit.")} <= documented  # every field a route set is documented
    generation, refused = lines
    assert generation["http"]["response"]["status_code"] == 200 and generation["event"]["duration"] > 0
    assert refused["error"]["code"] == "body_too_large" and refused["http"]["response"]["status_code"] == 413
    assert {s["span_id"] for s in collector.spans} == {line["span"]["id"] for line in lines}


def test_without_tracing_no_line_has_trace_ids(tmp_path):
    assert not any("trace" in line or "span" in line for line in access_lines(tmp_path))


def test_filebeat_ships_the_access_log_the_readme_writes_as_ndjson_to_elasticsearch():
    config = yaml.safe_load((ROOT / "monitoring" / "filebeat.yml").read_text())
    [source] = config["filebeat.inputs"]
    readme = (ROOT / "README.md").read_text()
    assert source["type"] == "filestream" and source["paths"] == sorted(set(re.findall(r"--access-log (/\S+)", readme)))
    [parser] = source["parsers"]
    assert parser["ndjson"]["target"] == "" and parser["ndjson"]["expand_keys"] is True  # "log.level" -> log.level
    assert config["output.elasticsearch"]["index"].startswith(config["setup.template.pattern"].rstrip("*"))
