"""Frozen configuration, one dataclass per layer of the flow (load → serve → route → scale → monitor).

Configs are values: build a new one with `dataclasses.replace` rather than mutating a shared instance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .monitor.slo import SLO
from .monitor.tracing import traces_url


def cache_dir() -> Path:
    """Where converted models live: `$LABKIT_CACHE`, else `~/.cache/labkit`."""
    return Path(os.environ.get("LABKIT_CACHE") or Path.home() / ".cache" / "labkit").expanduser()


@dataclass(frozen=True)
class ModelConfig:
    """What to load and how: an alias from `labkit models`, a Hugging Face id, or a local directory."""

    name: str = "smollm2-135m-instruct"
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    dtype: str = "auto"  # "auto": bfloat16 on CUDA and on CPUs with native bf16, else float32
    trust_remote_code: bool = False


@dataclass(frozen=True)
class EngineConfig:
    """How the continuous-batching engine schedules requests and sizes its KV cache (`labkit.LLM`).

    The KV cache is preallocated once: `kv_cache_tokens` tokens of keys and values for every layer, cut
    into pages of `page_size` tokens. Requests take pages as they grow; when none are left the newest
    running request is preempted and recomputed later.
    """

    max_num_seqs: int = 64  # most requests running (decoding or prefilling) at once (vLLM's default: 256)
    max_num_batched_tokens: int = 512  # per-step token budget; longer prompts are prefilled in chunks
    max_model_len: int | None = None  # longest prompt + output; None: the model's context (and the cache's size)
    kv_cache_tokens: int = 16384  # KV memory, in tokens, preallocated once (rounded down to whole pages)
    page_size: int = 64  # tokens per KV page: the unit requests grow by
    seed: int | None = None  # seeds sampling for requests without a seed of their own; None: fresh from the OS
    prepack_weights: bool = True  # bfloat16 on CPU: linear weights reordered once for oneDNN (same results, +1x weights)
    adapt_threads: bool = True  # on CPU: fewer torch threads while another process shares the cores (engine/threads.py)
    step_log_size: int = 1024  # steps kept in `LLM.steps` (a window: about 2 KB a step at batch 32)
    enable_prefix_caching: bool = True  # requests sharing a prompt prefix share its KV pages (vLLM's name)
    cpu_threads: int | None = None  # on CPU: torch threads the engine steps with; None: the count where it is built
    lean_forward: bool = True  # Llama, Mistral, Qwen2: the engine's own forward (engine/llama_forward.py); False: transformers' modules
    enforce_eager: bool = False  # on a GPU: decode steps run op by op, not replayed as CUDA graphs (vLLM's name; engine/cuda_graphs.py)
    cpu_kernels: bool = True  # lean forward, bfloat16, AVX512-BF16 CPU: labkit's own kernels for norms, rotary, decode attention and matmuls (every step with AMX, else steps of up to 8 tokens; engine/cpu_kernels.py)

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.page_size, self.step_log_size) < 1:
            raise ValueError("EngineConfig: max_num_seqs, max_num_batched_tokens, page_size and step_log_size must "
                             "be at least 1.")
        if self.kv_cache_tokens < self.page_size:
            raise ValueError(f"EngineConfig: kv_cache_tokens ({self.kv_cache_tokens}) must hold at least one page "
                             f"of {self.page_size} tokens.")
        if self.cpu_threads is not None and self.cpu_threads < 1:
            raise ValueError("EngineConfig: cpu_threads must be at least 1 (or None).")
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError("EngineConfig: max_model_len must leave room for a prompt token and an output token.")


@dataclass(frozen=True)
class ServerConfig:
    """How the OpenAI-compatible server listens, admits and limits requests (`labkit serve`, `labkit.serve`).

    Safe by default: loopback only, no CORS, a bounded queue, a body-size limit and a per-request timeout.
    """

    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int = 8000  # 0 picks a free port
    api_key: str | None = None  # bearer key; None means no key is asked for (LABKIT_API_KEY also sets it)
    cors_origins: tuple[str, ...] = ()  # no CORS headers unless origins are given
    max_body_bytes: int = 1 << 20  # larger bodies get 413
    max_waiting: int = 64  # requests queued beyond the running batch; more get 429 with Retry-After
    retry_after_s: int = 1  # the Retry-After a 429 carries
    request_timeout_s: float = 120.0  # a request still unfinished after this gets 504 (or an error event)
    shutdown_grace_s: float = 30.0  # on SIGTERM/Ctrl-C, in-flight requests get this long, then are cancelled
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback and the bound address ("*": any)
    header_timeout_s: float = 10.0  # a client must send its request line and headers within this
    body_timeout_s: float = 30.0  # and then its whole body within this (else 408)
    embed_max_batch_size: int = 32  # dynamic batcher for /v1/embeddings: most texts per encoder call
    embed_max_queue_delay_ms: float = 5.0  # how long the first text waits for others to join its batch
    access_log: str | None = None  # path of the access log, ECS JSON lines ("-" for stdout); None turns it off
    otlp_traces_endpoint: str | None = None  # OTLP/HTTP collector for request traces (vLLM's name); None: no tracing
    slo: SLO = SLO()  # latency targets finished requests are judged against (goodput in /metrics)

    def __post_init__(self) -> None:
        checks = {"max_waiting": self.max_waiting >= 0, "max_body_bytes": self.max_body_bytes >= 1,
                  "request_timeout_s": self.request_timeout_s > 0, "shutdown_grace_s": self.shutdown_grace_s >= 0,
                  "header_timeout_s": self.header_timeout_s > 0, "body_timeout_s": self.body_timeout_s > 0,
                  "retry_after_s": self.retry_after_s >= 0, "embed_max_batch_size": self.embed_max_batch_size >= 1,
                  "embed_max_queue_delay_ms": self.embed_max_queue_delay_ms >= 0, "port": 0 <= self.port < 65536}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ServerConfig: out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.otlp_traces_endpoint is not None:
            traces_url(self.otlp_traces_endpoint)  # a ValueError saying what is wrong with it


@dataclass(frozen=True)
class RouterConfig:
    """How the router (`labkit up`, `labkit.route`) admits requests and spreads them over replicas.

    The router speaks the same OpenAI API as a replica. It never queues: a request goes to a replica at
    once, or is refused (429 with Retry-After when every healthy replica holds `max_outstanding_per_replica`
    requests, 503 when none is healthy), so a client never hangs on a full or dead pool. On stop it drains:
    new requests get 503, in-flight ones have `drain_timeout_s`, then each still running ends with an
    OpenAI-shaped error (an error event and `[DONE]` for a stream), never a cut connection.
    """

    host: str = "127.0.0.1"  # loopback only unless told otherwise
    port: int = 8000  # 0 picks a free port
    policy: str = "least_outstanding"  # a name from labkit.route.POLICIES
    max_outstanding_per_replica: int = 64  # in-flight requests per replica before the router answers 429
    retry_after_s: int = 1  # the Retry-After a 429 carries
    connect_timeout_s: float = 2.0  # a replica that does not accept the connection in time counts as failed
    request_timeout_s: float = 300.0  # most seconds a forwarded request may take (504 after)
    affinity_prefix_chars: int = 256  # prefix_affinity: this much of the prompt picks the replica
    max_body_bytes: int = 1 << 20  # larger bodies get 413 from the router itself
    api_key: str | None = None  # bearer key asked on /v1/*; None: no key (`labkit up`: $LABKIT_API_KEY)
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback and the bound address ("*": any)
    drain_timeout_s: float = 30.0  # on stop, in-flight requests get this long; then each ends with an error
    header_timeout_s: float = 10.0  # a client must send its request line and headers within this (slowloris)
    body_timeout_s: float = 30.0  # and its whole body within this once the headers are in (else 408)
    access_log: str | None = None  # path of the router's access log, ECS JSON lines ("-" for stdout); None: none
    otlp_traces_endpoint: str | None = None  # OTLP/HTTP collector for request traces (vLLM's name); None: no tracing

    def __post_init__(self) -> None:
        checks = {"port": 0 <= self.port < 65536, "max_outstanding_per_replica": self.max_outstanding_per_replica >= 1,
                  "max_body_bytes": self.max_body_bytes >= 1,
                  "retry_after_s": self.retry_after_s >= 0, "connect_timeout_s": self.connect_timeout_s > 0,
                  "request_timeout_s": self.request_timeout_s > 0, "affinity_prefix_chars": self.affinity_prefix_chars >= 1,
                  "drain_timeout_s": self.drain_timeout_s >= 0, "header_timeout_s": self.header_timeout_s > 0,
                  "body_timeout_s": self.body_timeout_s > 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"RouterConfig: out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
        if self.otlp_traces_endpoint is not None:
            traces_url(self.otlp_traces_endpoint)


@dataclass(frozen=True)
class ScaleConfig:
    """Replica pool bounds and the autoscaler's targets and delays (`labkit up --min-replicas A --max-replicas B`).

    Each tick the autoscaler asks for `ceil(in-flight / target_ongoing_requests)` replicas (at least one
    more when the queue per replica passes `max_queue_per_replica` or the p99 latency passes
    `latency_slo_p99_s`). It acts only when every sample since the last change agreed for the whole delay:
    `upscale_delay_s` to add replicas, the longer `downscale_delay_s` to remove them, so it does not flap.
    Its field names follow Ray Serve's `autoscaling_config` (see benchmarks/ray_serve.py for the mapping).
    """

    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 4.0  # in-flight requests per replica the autoscaler aims for
    max_queue_per_replica: float | None = 8.0  # waiting requests per replica that call for one more replica
    latency_slo_p99_s: float | None = None  # optional: a p99 end-to-end latency that calls for one more replica
    upscale_delay_s: float = 2.0  # demand must stay above the current size this long before adding
    downscale_delay_s: float = 10.0  # and below it this long before removing
    interval_s: float = 0.5  # seconds between autoscaler ticks (and replica health checks)
    threads_per_replica: int | None = None  # torch/OpenMP threads each replica uses; None: the cores split evenly
    replica_start_timeout_s: float = 120.0  # a replica not ready after this is killed and replaced
    drain_timeout_s: float = 30.0  # a replica stopped (scale-down, stop) gets this long for its in-flight requests

    def __post_init__(self) -> None:
        checks = {"min_replicas": self.min_replicas >= 1, "max_replicas": self.max_replicas >= max(1, self.min_replicas),
                  "target_ongoing_requests": self.target_ongoing_requests > 0,
                  "max_queue_per_replica": self.max_queue_per_replica is None or self.max_queue_per_replica >= 0,
                  "latency_slo_p99_s": self.latency_slo_p99_s is None or self.latency_slo_p99_s > 0,
                  "upscale_delay_s": self.upscale_delay_s >= 0, "downscale_delay_s": self.downscale_delay_s >= 0,
                  "interval_s": self.interval_s > 0,
                  "threads_per_replica": self.threads_per_replica is None or self.threads_per_replica >= 1,
                  "replica_start_timeout_s": self.replica_start_timeout_s > 0,
                  "drain_timeout_s": self.drain_timeout_s >= 0}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ScaleConfig: out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
