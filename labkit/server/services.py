"""What one server hosts: at most one LLM (an `AsyncLLM`, which routes call directly) and one encoder (through
the dynamic batcher), with the admission queue and the requests in flight. Routes look models up here by
name; an unknown name is a 404."""
from __future__ import annotations

import asyncio
import itertools
import time

from ..config import ServerConfig
from ..errors import UnsupportedModel
from ..models import LoadedModel
from .embeddings import EmbeddingService
from .errors import APIError, model_not_found
from .limits import Admission


class Services:
    def __init__(self, models: list[LoadedModel], config: ServerConfig, metrics, engine_options: dict | None = None,
                 bus=None):
        kinds = [m.kind for m in models]
        if not models or len(set(kinds)) != len(kinds):
            raise ValueError("a server hosts one causal LM, one encoder, or one of each")
        self.created = int(time.time())
        self.config = config
        self.metrics = metrics
        self.llm: LoadedModel | None = None
        self.engine = None  # the AsyncLLM serving self.llm
        self.encoder: EmbeddingService | None = None
        self.ready = False
        self.jobs: set = set()  # GenerationJobs in flight, for the drain
        self.engine_ids = itertools.count()  # suffixes that keep engine request ids unique
        self._stopped = False
        for loaded in models:
            if loaded.kind == "encoder":
                self.encoder = EmbeddingService(loaded, max_batch_size=config.embed_max_batch_size,
                                                max_queue_delay_ms=config.embed_max_queue_delay_ms,
                                                retry_after_s=config.retry_after_s, metrics=metrics)
            elif loaded.kind != "causal-lm":
                raise UnsupportedModel(f"{loaded.name} is an {loaded.kind}; the server hosts causal LMs and encoders")
            else:
                from ..engine import AsyncLLM  # the engine, imported only where an LLM is hosted

                self.llm = loaded
                self.engine = AsyncLLM(loaded, bus=bus, **(engine_options or {}))
        max_running = self.engine.max_num_seqs if self.engine is not None else 0
        self.admission = Admission(max_running, config.max_waiting, config.retry_after_s)

    def names(self) -> list[str]:
        return [m.name for m in (self.llm, self.encoder) if m is not None]

    model_ids = names

    def model_cards(self) -> list[dict]:
        cards = []
        if self.llm is not None:
            cards.append({"id": self.llm.name, "object": "model", "created": self.created, "owned_by": "labkit",
                          "kind": "causal-lm", "max_model_len": self.engine.max_model_len})
        if self.encoder is not None:
            cards.append({"id": self.encoder.name, "object": "model", "created": self.created, "owned_by": "labkit",
                          "kind": "encoder", "max_model_len": self.encoder.max_model_len})
        return cards

    def _check(self, name: str | None, hosted: str | None, kind: str, endpoint: str) -> None:
        if name is not None and name not in self.names():
            raise model_not_found(name, self.names())
        if hosted is None or (name is not None and name != hosted):
            raise APIError(400, f"{endpoint} needs a {kind} model; this server hosts: {', '.join(self.names())}.",
                           code="wrong_model_kind", param="model")
        if not self.ready:
            raise APIError(503, "The server is not ready (starting or shutting down).", code="not_ready")

    def llm_for(self, name: str | None):
        """The AsyncLLM for a request naming `name` (or none)."""
        self._check(name, self.llm.name if self.llm else None, "causal-lm", "Text generation")
        return self.engine

    def encoder_for(self, name: str | None) -> EmbeddingService:
        self._check(name, self.encoder.name if self.encoder else None, "encoder", "/v1/embeddings")
        return self.encoder

    def start_job(self, request_id: str, prompt_ids: list[int], params):
        """Admit (429 when the queue is full, 503 while draining) and submit to the engine."""
        from .generation import GenerationJob

        self.admission.admit()
        job = GenerationJob(self, request_id, prompt_ids, params)
        self.jobs.add(job)
        return job

    # ---- engine state, for /metrics and /health ----
    def num_running(self) -> int:
        return self.engine.num_running if self.engine is not None else 0

    def num_waiting(self) -> int:
        return self.engine.num_waiting if self.engine is not None else 0

    def kv_usage(self) -> float:
        return self.engine.kv_usage if self.engine is not None else 0.0

    def problem(self) -> str | None:
        """Why the server cannot serve, or None."""
        error = self.engine.error if self.engine is not None else None
        return None if error is None else f"the engine thread failed: {type(error).__name__}: {error}"

    async def start(self) -> None:
        if self.engine is not None:
            self.engine.start()
        self.ready = True

    async def drain(self, grace_s: float) -> None:
        """Refuse new requests (503), let running ones finish for `grace_s`, then cancel the rest."""
        self.ready = False
        self.admission.accepting = False
        deadline = time.monotonic() + grace_s
        while self.jobs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for job in list(self.jobs):
            job.cancel("The server is shutting down; the request was cancelled.")

    async def stop(self, grace_s: float) -> None:
        """Drain, stop the engine thread and give the model back its own attention; stop the encoder's worker."""
        await self.drain(grace_s)
        if self.engine is not None and not self._stopped:
            self._stopped = True
            await asyncio.to_thread(self.engine.stop)
            self.engine.engine.close()
        if self.encoder is not None:
            self.encoder.close()
