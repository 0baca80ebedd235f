"""`labkit bench serve`: a load test of any OpenAI-compatible server (labkit, `transformers serve`, vLLM).

N chat requests, at most C in flight, each streamed (read by sse_client.py, a client lean enough not to take
the CPU the server under test needs): the client times the first token (TTFT), the gaps
between tokens (ITL) and the whole request (end-to-end), counts output tokens (from `usage` when the
server sends it, else one per content chunk), and reports throughput, percentiles, errors and goodput:
the requests per second that met every SLO given (`--slo-ttft-ms`, `--slo-itl-ms`, `--slo-e2e-ms`).
With `--response-format` every request asks for structured output (`json_object`, or a JSON schema from a
file), so one flag measures what a grammar costs; the report then counts the outputs that parse as JSON.
"""
from __future__ import annotations

import asyncio
import json
import platform
import random
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx

from ..monitor.percentiles import percentile
from ..monitor.slo import SLO
from .engine_workload import EngineWorkload
from .measure import tail_name
from .sse_client import StreamError, stream_post

PROMPTS = (
    "Explain what a hash table is.", "Write a short poem about the sea.", "What causes the seasons on Earth?",
    "Give three tips for learning a new language.", "Describe how a bicycle works.",
    "What is the difference between weather and climate?", "Summarise the plot of a detective story.",
    "Why is the sky blue?", "List some uses of a paperclip.", "How do vaccines work?",
    "What makes a good cup of tea?", "Explain recursion to a child.", "Describe a busy market in the morning.",
    "What are the planets of the solar system?", "How does a refrigerator keep food cold?",
    "Tell me about the history of the printing press.",
)


@dataclass
class Workload:
    requests: int = 32
    concurrency: int = 32
    min_tokens: int = 16
    max_tokens: int = 128
    seed: int = 0
    temperature: float = 0.0
    response_format: dict | None = None  # OpenAI's response_format, sent with every request
    # "engine": `labkit bench engine`'s requests (its chats, its output lengths enforced with min_tokens and
    # ignore_eos, which vLLM also takes), so a server and the engine alone are compared like for like
    name: str = "default"

    def __post_init__(self):
        if self.name not in WORKLOADS:
            raise ValueError(f"Unknown workload {self.name!r}; choose from {', '.join(WORKLOADS)}.")

    @property
    def exact_lengths(self) -> bool:
        return self.name == "engine"

    def items(self) -> list[tuple[list[dict], int]]:
        """(chat messages, max_tokens) for each request."""
        if self.name == "engine":
            return EngineWorkload(num_requests=self.requests, min_output_tokens=self.min_tokens,
                                  max_output_tokens=self.max_tokens, seed=self.seed).requests()
        rng = random.Random(self.seed)
        return [([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], rng.randint(self.min_tokens, self.max_tokens))
                for i in range(self.requests)]


WORKLOADS = ("default", "engine")


def response_format(value: str) -> dict:
    """`--response-format`: "json_object", or the path of a JSON schema file (sent as a strict json_schema)."""
    if value == "json_object":
        return {"type": "json_object"}
    try:
        with open(value) as schema_file:
            schema = json.load(schema_file)
    except OSError as err:
        raise ValueError(f"--response-format is json_object or a JSON schema file; cannot read {value!r}: "
                         f"{err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--response-format: {value} is not JSON ({err.msg}, line {err.lineno})") from None
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema, "strict": True}}


@dataclass
class Result:
    ok: bool
    output_tokens: int = 0
    text: str = ""
    ttft_s: float | None = None
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None


async def one_request(url: str, model: str, messages: list[dict], max_tokens: int, temperature: float,
                      headers: dict, response_format: dict | None = None, exact_length: bool = False,
                      timeout_s: float = 600.0) -> Result:
    body = {"model": model, "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True}}
    if response_format is not None:
        body["response_format"] = response_format
    if exact_length:
        body.update(min_tokens=max_tokens, ignore_eos=True)
    started = time.perf_counter()
    last = None
    result = Result(ok=False)
    chunks = 0
    try:
        async with stream_post(f"{url}/v1/chat/completions", body, headers, timeout_s) as response:
            if response.status != 200:
                await response.text()
                result.error = f"HTTP {response.status}"
                return result
            async for data in response.events():
                if data == b"[DONE]":
                    break
                payload = json.loads(data)
                if "error" in payload:
                    result.error = f"stream error: {payload['error'].get('code') or payload['error'].get('type')}"
                    return result
                if payload.get("usage"):
                    result.output_tokens = int(payload["usage"].get("completion_tokens") or 0)
                for choice in payload.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        result.text += choice["delta"]["content"]
                        now = time.perf_counter()
                        chunks += 1
                        if last is None:
                            result.ttft_s = now - started
                        else:
                            result.itl_s.append(now - last)
                        last = now
    except (StreamError, TimeoutError, json.JSONDecodeError) as err:
        result.error = type(err).__name__
        return result
    result.e2e_s = time.perf_counter() - started
    result.output_tokens = result.output_tokens or chunks
    result.ok = True
    return result


def _stats(prefix: str, values: list[float]) -> dict:
    return {f"{prefix}_mean_s": sum(values) / len(values) if values else None,
            f"{prefix}_p50_s": percentile(values, 0.5), f"{prefix}_p99_s": percentile(values, 0.99),
            f"{prefix}_max_s": max(values, default=None), f"{prefix}_samples": len(values)}


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def summarise(results: list[Result], wall_s: float, slo: SLO, structured: bool = False) -> dict:
    ok = [r for r in results if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error or "unknown"] = errors.get(r.error or "unknown", 0) + 1
    summary = {
        "requests": len(results), "completed": len(ok), "errors": sum(errors.values()), "error_kinds": errors,
        "output_tokens": tokens, "wall_s": wall_s,
        "requests_per_s": len(ok) / wall_s if wall_s else 0.0,
        "output_tokens_per_s": tokens / wall_s if wall_s else 0.0,
        **_stats("ttft", [r.ttft_s for r in ok if r.ttft_s is not None]),
        **_stats("itl", [gap for r in ok for gap in r.itl_s]),
        **_stats("latency", [r.e2e_s for r in ok]),
    }
    if structured:  # outputs cut by max_tokens are unfinished JSON: they count as not parsing
        summary["outputs_parsing_as_json"] = sum(_parses(r.text) for r in ok)
    if slo.is_set:
        good = sum(r.ok and slo.met(ttft_s=r.ttft_s, e2e_s=r.e2e_s, itl_s=r.itl_s) for r in results)
        summary["slo"] = {k: v for k, v in vars(slo).items() if v is not None}
        summary["goodput_requests_per_s"] = good / wall_s if wall_s else 0.0
        summary["slo_attainment"] = good / len(results) if results else 0.0
    return summary


async def detect(client: httpx.AsyncClient, url: str, headers: dict) -> tuple[str, str]:
    """(model id, server name) from /v1/models, for the report; --name overrides the guess."""
    response = await client.get(f"{url}/v1/models", headers=headers)
    response.raise_for_status()
    cards = response.json()["data"]
    chat = [c for c in cards if c.get("kind", "causal-lm") == "causal-lm"] or cards
    owner = chat[0].get("owned_by") or ""
    if owner in ("labkit", "vllm"):
        name = owner
    elif "status" in chat[0]:  # transformers serve reports each model's load status
        name = "transformers-serve"
    else:
        name = urlparse(url).netloc
    return chat[0]["id"], name


async def run_load(url: str, workload: Workload, *, model: str | None = None, api_key: str | None = None,
                   slo: SLO = SLO(), warmup: int = 1, timeout_s: float = 600.0) -> tuple[str, str, dict]:
    url = url.rstrip("/").removesuffix("/v1")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0)) as client:
        detected_model, server = await detect(client, url, headers)
    model = model or detected_model
    for _ in range(warmup):
        await one_request(url, model, [{"role": "user", "content": PROMPTS[0]}], 8, workload.temperature, headers,
                          workload.response_format, timeout_s=timeout_s)
    gate = asyncio.Semaphore(workload.concurrency)

    async def gated(messages: list[dict], max_tokens: int) -> Result:
        async with gate:
            return await one_request(url, model, messages, max_tokens, workload.temperature, headers,
                                     workload.response_format, workload.exact_lengths, timeout_s)

    started = time.perf_counter()
    results = await asyncio.gather(*(gated(p, n) for p, n in workload.items()))
    wall = time.perf_counter() - started
    return server, model, summarise(list(results), wall, slo, structured=workload.response_format is not None)


def machine() -> dict:
    from ..monitor import cpu_reading, gpu_readings

    cpu = cpu_reading()
    return {"cpu": cpu.model, "physical_cores": cpu.physical_cores, "logical_cores": cpu.logical_cores,
            "memory_gib": round(cpu.memory_total_bytes / 2**30, 1), "gpus": [g.name for g in gpu_readings()],
            "python": platform.python_version()}


def bench_serve(url: str, workload: Workload, *, model: str | None = None, api_key: str | None = None,
                slo: SLO = SLO(), name: str | None = None, warmup: int = 1) -> dict:
    """Run the load test and return the benchmark JSON (DESIGN.md's shape, one system)."""
    server, model, summary = asyncio.run(run_load(url, workload, model=model, api_key=api_key, slo=slo,
                                                  warmup=warmup))
    return {"machine": machine(),
            "workload": {**vars(workload), "url": url, "model": model, "endpoint": "/v1/chat/completions",
                         "stream": True},
            "systems": {name or server: summary}, "ratios": {}}


def merge_reports(existing: dict, new: dict) -> dict:
    """Add `new`'s system to a report of the same workload, so one JSON compares servers; `ratios` then
    hold labkit's output tokens/s and p99 TTFT relative to each other system."""
    same = lambda w: {k: v for k, v in w.items() if k not in ("url", "model")}  # noqa: E731
    if same(existing["workload"]) != same(new["workload"]):
        raise ValueError("the existing JSON holds a different workload; write to another file")
    merged = {**existing, "machine": new["machine"], "systems": {**existing["systems"], **new["systems"]}}
    ratios = {}
    base = merged["systems"].get("labkit")
    for name, other in merged["systems"].items():
        if base is not None and name != "labkit" and other["output_tokens_per_s"] and other["ttft_p99_s"]:
            ratios[f"labkit_vs_{name}_output_tokens_per_s"] = base["output_tokens_per_s"] / other["output_tokens_per_s"]
            ratios[f"labkit_vs_{name}_ttft_p99"] = base["ttft_p99_s"] / other["ttft_p99_s"]
    merged["ratios"] = ratios
    return merged


def format_report(report: dict) -> str:
    lines = []
    for name, s in report["systems"].items():
        ms = lambda v: "n/a" if v is None else f"{v * 1000:.0f}"  # noqa: E731

        def tail(prefix: str) -> str:  # fewer than 100 samples: their "p99" is the maximum, and named so
            name = tail_name(s.get(f"{prefix}_samples", 100))
            return f"{name} {ms(s[f'{prefix}_max_s'] if name == 'max' else s[f'{prefix}_p99_s'])} ms"
        lines += [f"{name}: {s['completed']}/{s['requests']} requests in {s['wall_s']:.1f} s, {s['errors']} errors "
                  f"{s['error_kinds'] or ''}".rstrip(),
                  f"  throughput  {s['requests_per_s']:.2f} req/s, {s['output_tokens_per_s']:.1f} output tok/s "
                  f"({s['output_tokens']} tokens)",
                  f"  TTFT        mean {ms(s['ttft_mean_s'])} ms, p50 {ms(s['ttft_p50_s'])} ms, {tail('ttft')}",
                  f"  ITL         mean {ms(s['itl_mean_s'])} ms, p50 {ms(s['itl_p50_s'])} ms, {tail('itl')}",
                  f"  end-to-end  mean {ms(s['latency_mean_s'])} ms, p50 {ms(s['latency_p50_s'])} ms, "
                  f"{tail('latency')}"]
        if "outputs_parsing_as_json" in s:
            lines.append(f"  structured  {s['outputs_parsing_as_json']}/{s['completed']} outputs parse as JSON "
                         f"(an output cut by max_tokens does not)")
        if "goodput_requests_per_s" in s:
            lines.append(f"  goodput     {s['goodput_requests_per_s']:.2f} req/s within SLO {s['slo']} "
                         f"({s['slo_attainment']:.0%} of requests)")
    return "\n".join(lines)
