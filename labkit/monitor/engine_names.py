"""Another engine's /metrics read in labkit's names, so one monitor watches labkit and vLLM alike.

labkit named its series after vLLM's (DESIGN.md), so the mapping is mostly the prefix. Where vLLM renamed a
series between versions its names are listed newest first, and the first one a scrape carries is read.
The units agree: seconds, tokens, and `kv_cache_usage_perc` a fraction from 0 to 1 in both (vLLM's help
text: "1 means 100 percent usage"). vLLM has no batch-size histogram and no device gauges, so those stay
unknown for a vLLM server.
"""
from __future__ import annotations

from .scrape import Samples

LABKIT, VLLM = "labkit", "vLLM"

# labkit's name -> vLLM's names, newest first (counters with their _total, as the samples are named).
VLLM_SERIES = {
    "labkit:num_requests_running": ("vllm:num_requests_running",),
    "labkit:num_requests_waiting": ("vllm:num_requests_waiting",),
    "labkit:kv_cache_usage_perc": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    "labkit:prompt_tokens_total": ("vllm:prompt_tokens_total",),
    "labkit:generation_tokens_total": ("vllm:generation_tokens_total",),
    "labkit:request_success_total": ("vllm:request_success_total",),
    "labkit:prefix_cache_queries_total": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "labkit:prefix_cache_hits_total": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
}
VLLM_HISTOGRAMS = {
    "labkit:time_to_first_token_seconds": ("vllm:time_to_first_token_seconds",),
    # Each gap between tokens, in both; older vLLM called it time_per_output_token_seconds (not 0.32's
    # request_time_per_output_token_seconds, which is one mean per request).
    "labkit:inter_token_latency_seconds": ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
    "labkit:e2e_request_latency_seconds": ("vllm:e2e_request_latency_seconds",),
    "labkit:request_queue_time_seconds": ("vllm:request_queue_time_seconds",),
    "labkit:iteration_tokens_total": ("vllm:iteration_tokens_total",),
}
_HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def engine_of(samples: Samples) -> str | None:
    """Whose exposition a scrape is: "labkit", "vLLM", or None when it has neither's series."""
    prefixes = {name.split(":", 1)[0] for name in samples if ":" in name}
    return LABKIT if "labkit" in prefixes else VLLM if "vllm" in prefixes else None


def canonical(samples: Samples) -> Samples:
    """The scrape with labkit's names added for what another engine exports under its own (its own names
    stay too); a labkit scrape as it is."""
    if engine_of(samples) != VLLM:
        return samples
    renamed: Samples = {}
    for ours, theirs in VLLM_SERIES.items():
        found = next((name for name in theirs if name in samples), None)
        if found is not None:
            renamed[ours] = samples[found]
    for ours, theirs in VLLM_HISTOGRAMS.items():
        found = next((name for name in theirs if f"{name}_count" in samples), None)
        if found is not None:  # all three parts from one series, so buckets and count agree
            renamed.update({ours + part: samples[found + part] for part in _HISTOGRAM_PARTS if found + part in samples})
    return {**samples, **renamed}
