"""Frozen configuration, one dataclass per layer of the flow (load → serve → route → scale → monitor).

Configs are values: build a new one with `dataclasses.replace` rather than mutating a shared instance.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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

    max_num_seqs: int = 32  # most requests running (decoding or prefilling) at once
    max_num_batched_tokens: int = 512  # per-step token budget; longer prompts are prefilled in chunks
    max_model_len: int | None = None  # longest prompt + output; None: the model's context (and the cache's size)
    kv_cache_tokens: int = 16384  # KV memory, in tokens, preallocated once (rounded down to whole pages)
    page_size: int = 64  # tokens per KV page: the unit requests grow by
    seed: int = 0  # seeds sampling for requests that bring no seed of their own
    prepack_weights: bool = True  # bfloat16 on CPU: linear weights reordered once for oneDNN (same results, +1x weights)

    def __post_init__(self) -> None:
        if min(self.max_num_seqs, self.max_num_batched_tokens, self.page_size) < 1:
            raise ValueError("EngineConfig: max_num_seqs, max_num_batched_tokens and page_size must be at least 1.")
        if self.kv_cache_tokens < self.page_size:
            raise ValueError(f"EngineConfig: kv_cache_tokens ({self.kv_cache_tokens}) must hold at least one page "
                             f"of {self.page_size} tokens.")
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
    shutdown_grace_s: float = 10.0  # on SIGTERM/Ctrl-C, in-flight requests get this long, then are cancelled
    embed_max_batch_size: int = 32  # dynamic batcher for /v1/embeddings: most texts per encoder call
    embed_max_queue_delay_ms: float = 5.0  # how long the first text waits for others to join its batch
    access_log: str | None = None  # path of a JSON-lines access log ("-" for stdout); None turns it off

    def __post_init__(self) -> None:
        checks = {"max_waiting": self.max_waiting >= 0, "max_body_bytes": self.max_body_bytes >= 1,
                  "request_timeout_s": self.request_timeout_s > 0, "shutdown_grace_s": self.shutdown_grace_s >= 0,
                  "retry_after_s": self.retry_after_s >= 0, "embed_max_batch_size": self.embed_max_batch_size >= 1,
                  "embed_max_queue_delay_ms": self.embed_max_queue_delay_ms >= 0, "port": 0 <= self.port < 65536}
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"ServerConfig: out of range: {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)}")
