"""The Grafana dashboard for labkit, built with Grafana's grafana-foundation-sdk (the `dev` extra).

`make grafana` (or `python monitoring/grafana/generate.py`) writes labkit.json beside this file. Change the
dashboard here, never in the JSON: a unit test checks that the committed JSON is what this file generates.
Every query filters on the `$job` variable; rates use Grafana's `$__rate_interval`.
"""
from __future__ import annotations

import json
from pathlib import Path
from string import ascii_uppercase

from grafana_foundation_sdk.builders import common, dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import LegendDisplayMode, LegendPlacement, StackingMode, TooltipDisplayMode
from grafana_foundation_sdk.models.dashboard import (DashboardCursorSync, DataSourceRef, DynamicConfigValue,
                                                     VariableOption, VariableRefresh)

OUTPUT = Path(__file__).with_name("labkit.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
WIDTH, HEIGHT = 8, 8  # three panels to a row of Grafana's 24 columns


def series(metric: str, **labels: str) -> str:
    matchers = ['job=~"$job"', *(f'{name}="{value}"' for name, value in labels.items())]
    return f"{metric}{{{','.join(matchers)}}}"


def rate(metric: str) -> str:
    return f"rate({series(metric)}[$__rate_interval])"


def quantile(q: float, histogram: str) -> str:
    return f"histogram_quantile({q}, sum by (le) ({rate(histogram + '_bucket')}))"


def ratio(part: str, whole: str) -> str:
    """Per-second rate of `part` over that of `whole`, summed over every scraped server."""
    return f"sum({rate(part)}) / sum({rate(whole)})"


def mean(histogram: str) -> str:
    return ratio(histogram + "_sum", histogram + "_count")


def slo_target(slo: str) -> str:
    # max: every replica of a model is given the same SLO, and the line is the same whichever one reports it
    return f"max({series('labkit:slo_target_seconds', slo=slo)})"


def panel(title: str, description: str, unit: str, *targets: tuple[str, str], width: int = WIDTH,
          stacked: bool = False) -> timeseries.Panel:
    """A time series of `(PromQL, legend)` targets. A fraction (unit `percentunit`) gets a fixed 0-1 axis."""
    built = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE)
             .span(width).height(HEIGHT).unit(unit).line_width(2).fill_opacity(5)
             .legend(common.VizLegendOptions().display_mode(LegendDisplayMode.LIST)
                     .placement(LegendPlacement.BOTTOM).show_legend(True))
             .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI)))
    if unit == "percentunit":
        built = built.min(0).max(1)
    if stacked:
        built = built.stacking(common.StackingConfig().mode(StackingMode.NORMAL))
    for ref_id, (expr, legend) in zip(ascii_uppercase, targets):
        built = built.with_target(prometheus.Dataquery().ref_id(ref_id).datasource(DATASOURCE).expr(expr)
                                  .legend_format(legend))
    return built


def panels() -> list[timeseries.Panel]:
    """In reading order: latency, goodput against the SLOs, throughput, capacity, resources, the fleet."""
    return [
        panel("Time to first token", "How long a user waits for the first token: queueing plus prefill. What a "
              "chat user feels as responsiveness. 'SLO' is the target given with --slo-ttft-ms.", "s",
              (quantile(0.5, "labkit:time_to_first_token_seconds"), "p50"),
              (quantile(0.99, "labkit:time_to_first_token_seconds"), "p99"),
              (slo_target("ttft"), "SLO")),
        panel("End-to-end latency", "Request arrival to last token. p99 is what one request in a hundred waits: "
              "the mean hides it. 'SLO' is the target given with --slo-e2e-ms.", "s",
              (mean("labkit:e2e_request_latency_seconds"), "mean"),
              (quantile(0.5, "labkit:e2e_request_latency_seconds"), "p50"),
              (quantile(0.99, "labkit:e2e_request_latency_seconds"), "p99"),
              (slo_target("e2e"), "SLO")),
        panel("Inter-token latency", "Gap between consecutive tokens of a stream (reading speed). Grows with the "
              "batch size. 'SLO' is the target given with --slo-itl-ms.", "s",
              (quantile(0.5, "labkit:inter_token_latency_seconds"), "p50"),
              (quantile(0.99, "labkit:inter_token_latency_seconds"), "p99"),
              (slo_target("itl"), "SLO")),
        panel("Goodput", "Finished requests per second that met every SLO set with --slo-ttft-ms, --slo-itl-ms and "
              "--slo-e2e-ms, beside all finished requests. Past the knee throughput still rises while goodput "
              "falls.", "reqps",
              (f"sum({rate('labkit:goodput_requests_total')})", "goodput"),
              (f"sum({rate('labkit:request_success_total')})", "finished")),
        panel("Goodput fraction", "Share of finished requests that met every SLO (1 when no SLO is set).",
              "percentunit", (ratio("labkit:goodput_requests_total", "labkit:request_success_total"), "goodput")),
        panel("SLO misses by phase", "Requests per second that missed an SLO, by the phase that broke it: waiting "
              "in the queue (add replicas), computing the prompt (shorter prompts, the prefix cache), or "
              "generating (a smaller batch).", "reqps",
              (f"sum by (phase) ({rate('labkit:slo_missed_requests_total')})", "{{phase}}"), stacked=True),
        panel("Generation throughput", "Tokens per second over all replicas: the capacity figure.", "short",
              (f"sum({rate('labkit:generation_tokens_total')})", "output tokens/s"),
              (f"sum({rate('labkit:prompt_tokens_total')})", "prompt tokens/s")),
        panel("Requests finished", "Finished requests per second by reason (stop, length, abort) and HTTP errors "
              "by status (429: queue full).", "reqps",
              (f"sum by (finished_reason) ({rate('labkit:request_success_total')})", "{{finished_reason}}"),
              (f"sum by (status) ({rate('labkit:request_errors_total')})", "HTTP {{status}}")),
        panel("Queue time", "Time from arrival to first scheduled: rises first when a server is overloaded.", "s",
              (quantile(0.99, "labkit:request_queue_time_seconds"), "p99"),
              (mean("labkit:request_queue_time_seconds"), "mean")),
        panel("Running and waiting requests", "Requests in the running batch and in the queue, over all "
              "replicas.", "short",
              (f"sum({series('labkit:num_requests_running')})", "running"),
              (f"sum({series('labkit:num_requests_waiting')})", "waiting")),
        panel("KV cache usage", "Fraction of KV-cache pages in use per server (a router shows its fullest "
              "replica). Near 1, requests get preempted and recomputed.", "percentunit",
              (series("labkit:kv_cache_usage_perc"), "{{instance}}")),
        panel("Batch size", "Mean requests and tokens per engine step: how much batching the traffic allows.",
              "short", (mean("labkit:batch_size"), "requests per step"),
              (mean("labkit:iteration_tokens_total"), "tokens per step")),
        panel("Prefix cache hit rate", "Prompt tokens found in the prefix cache over prompt tokens looked up: "
              "their keys and values were not computed again. Routing by prefix affinity raises it.",
              "percentunit", (ratio("labkit:prefix_cache_hits_total", "labkit:prefix_cache_queries_total"),
                              "hit rate")),
        panel("GPU memory", "VRAM per device through NVML: weights + KV cache + activations. Empty on machines "
              "without NVML (see process memory).", "bytes",
              (f"sum by (instance, gpu) ({series('labkit:gpu_memory_used_bytes')})", "used {{instance}} gpu {{gpu}}"),
              (f"sum by (instance, gpu) ({series('labkit:gpu_memory_total_bytes')})",
               "total {{instance}} gpu {{gpu}}")),
        panel("GPU utilisation", "NVML utilisation per device. Empty without NVML.", "percentunit",
              (series("labkit:gpu_utilization_perc"), "{{instance}} gpu {{gpu}}")),
        panel("Process memory and CPU (fallback without NVML)", "Resident memory of each server process (left "
              "axis) and machine CPU utilisation (right axis): the memory story on CPU-only machines.", "bytes",
              (series("labkit:process_resident_memory_bytes"), "RSS {{instance}}"),
              (series("labkit:cpu_utilization_perc"), "CPU {{instance}}"))
        .override_by_query("B", [DynamicConfigValue(id_val="unit", value="percentunit"),
                                 DynamicConfigValue(id_val="min", value=0), DynamicConfigValue(id_val="max", value=1),
                                 DynamicConfigValue(id_val="custom.axisPlacement", value="right")]),
        panel("Replicas", "Replicas behind the router and what the autoscaler wants (job labkit); 'servers "
              "scraped' counts the labkit processes Prometheus reaches in the chosen job.", "short",
              (f"max({series('labkit:replicas')})", "healthy (router)"),
              (f"max({series('labkit:replicas_desired')})", "desired"),
              (f"count({series('labkit:num_requests_running')})", "servers scraped"), width=2 * WIDTH),
    ]


def build() -> dashboard.Dashboard:
    board = (dashboard.Dashboard("labkit serving").uid("labkit-serving").tags(["labkit", "llm", "inference"])
             .description("labkit servers, router and replicas: latency, goodput against SLOs, throughput, queue, "
                          "KV and prefix cache, memory, replicas. Metric names follow vLLM's with the labkit: "
                          "prefix.")
             .editable().tooltip(DashboardCursorSync.CROSSHAIR).refresh("5s").time("now-15m", "now")
             .timezone("browser").version(1)
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             # One job at a time: a router's /metrics already adds up its replicas' series, so summing the
             # router's job with the replicas' would count every token twice.
             .with_variable(dashboard.QueryVariable("job").label("job").datasource(DATASOURCE)
                            .description("labkit: the server, or the router with its replicas added up; "
                                         "labkit-replicas: each replica on its own line.")
                            .query("label_values(labkit:num_requests_running, job)")
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
                            .current(VariableOption(text="labkit", value="labkit"))))
    for number, built in enumerate(panels(), start=1):  # ids in reading order: the same on every run
        board = board.with_panel(built.id(number))
    return board


def render() -> str:
    """The dashboard as JSON text with sorted keys, so that regenerating gives the same bytes."""
    return json.dumps(build().build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}")
