"""What a generation request's span says once it ends: OpenTelemetry's GenAI attributes (vLLM's names where
the conventions have none), and each engine request's queue, prefill and decode phases as child spans.

With tracing off `request.state.span` is None and this returns at once."""
from __future__ import annotations

from fastapi import Request


def trace_generation(request: Request, jobs: list) -> None:
    """Describe the request's span from its finished `GenerationJob`s (one per choice) and the access-log
    fields the route has just set (model, stream, token counts as the client's usage says)."""
    span = request.state.span
    if span is None or not jobs:
        return
    fields, params = request.state.log, jobs[0].params
    operation = "text_completion" if request.url.path == "/v1/completions" else "chat"
    span.update_name(f"{operation} {fields['model']}")
    attributes = {
        "gen_ai.operation.name": operation, "gen_ai.request.model": fields["model"],
        "gen_ai.response.model": fields["model"], "gen_ai.request.id": request.state.request_id,
        "gen_ai.request.stream": fields["stream"], "gen_ai.request.temperature": params.temperature,
        "gen_ai.request.top_p": params.top_p, "gen_ai.request.max_tokens": params.max_tokens,
        "gen_ai.response.finish_reasons": [job.finish_reason or "abort" for job in jobs],
        "gen_ai.usage.input_tokens": fields["prompt_tokens"], "gen_ai.usage.output_tokens": fields["completion_tokens"],
        "gen_ai.usage.cache_read.input_tokens": fields["cached_tokens"],
    }
    if params.top_k > 0:
        attributes["gen_ai.request.top_k"] = params.top_k
    if params.seed is not None:
        attributes["gen_ai.request.seed"] = params.seed
    if len(jobs) > 1:
        attributes["gen_ai.request.choice.count"] = len(jobs)
    first = jobs[0].timings
    if first is not None:  # vLLM's latency attributes, of the first choice (seconds)
        attributes.update(_latencies(first))
    span.set_attributes({k: v for k, v in attributes.items() if v is not None})
    tracing = request.app.state.tracing
    for index, job in enumerate(jobs):
        t = job.timings
        if t is not None:  # a request cancelled before the engine finished it has no timings
            tracing.add_phases(span, t.arrival_time, t.queue_time_s, t.ttft_s, t.e2e_latency_s,
                               {"labkit.choice": index, "gen_ai.request.id": job.engine_id})


def _latencies(t) -> dict:
    out = {"gen_ai.latency.time_in_queue": t.queue_time_s, "gen_ai.latency.e2e": t.e2e_latency_s}
    if t.ttft_s is not None:
        out.update({"gen_ai.latency.time_to_first_token": t.ttft_s,
                    "gen_ai.latency.time_in_model_prefill": t.ttft_s - t.queue_time_s,
                    "gen_ai.latency.time_in_model_decode": t.e2e_latency_s - t.ttft_s})
    return out
