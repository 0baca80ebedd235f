"""What one server hosts: at most one LLM (through the async engine) and one encoder (through the
dynamic batcher). Routes look models up here by name; an unknown name is a 404."""
from __future__ import annotations

import time

from ..config import ServerConfig
from ..models import LoadedModel
from .embeddings import EmbeddingService
from .errors import APIError, model_not_found


class Services:
    def __init__(self, models: list[LoadedModel], config: ServerConfig, metrics, engine_options: dict | None = None,
                 bus=None):
        kinds = [m.kind for m in models]
        if not models or len(set(kinds)) != len(kinds):
            raise ValueError("a server hosts one causal LM, one encoder, or one of each")
        self.created = int(time.time())
        self.config = config
        self.metrics = metrics
        self.llm = None
        self.encoder: EmbeddingService | None = None
        self.ready = False
        for loaded in models:
            if loaded.kind == "encoder":
                self.encoder = EmbeddingService(loaded, max_batch_size=config.embed_max_batch_size,
                                                max_queue_delay_ms=config.embed_max_queue_delay_ms,
                                                retry_after_s=config.retry_after_s, metrics=metrics)
            else:
                from .generation import LLMService  # the engine, imported only where an LLM is hosted

                self.llm = LLMService(loaded, config, metrics, bus=bus, **(engine_options or {}))

    def names(self) -> list[str]:
        return [s.name for s in (self.llm, self.encoder) if s is not None]

    model_ids = names

    def model_cards(self) -> list[dict]:
        return [{"id": s.name, "object": "model", "created": self.created, "owned_by": "labkit",
                 "kind": "causal-lm" if s is self.llm else "encoder", "max_model_len": s.max_model_len}
                for s in (self.llm, self.encoder) if s is not None]

    def _lookup(self, name: str | None, service, kind: str, endpoint: str):
        if name is not None and name not in self.names():
            raise model_not_found(name, self.names())
        if service is None or (name is not None and name != service.name):
            raise APIError(400, f"{endpoint} needs a {kind} model; this server hosts: {', '.join(self.names())}.",
                           code="wrong_model_kind", param="model")
        if not self.ready:
            raise APIError(503, "The server is not ready (starting or shutting down).", code="not_ready")
        return service

    def llm_for(self, name: str | None):
        return self._lookup(name, self.llm, "causal-lm", "Text generation")

    def encoder_for(self, name: str | None) -> EmbeddingService:
        return self._lookup(name, self.encoder, "encoder", "/v1/embeddings")

    def num_running(self) -> int:
        return self.llm.num_running() if self.llm is not None else 0

    def num_waiting(self) -> int:
        return self.llm.num_waiting() if self.llm is not None else 0

    def kv_usage(self) -> float:
        return self.llm.kv_usage() if self.llm is not None else 0.0

    def problem(self) -> str | None:
        """Why the server cannot serve, or None."""
        if self.llm is not None:
            return self.llm.problem()
        return None

    async def start(self) -> None:
        if self.llm is not None:
            await self.llm.start()
        self.ready = True

    async def stop(self, grace_s: float) -> None:
        """Stop admitting, give in-flight requests `grace_s` to finish, cancel the rest, stop the workers."""
        self.ready = False
        if self.llm is not None:
            await self.llm.stop(grace_s)
        if self.encoder is not None:
            self.encoder.close()
