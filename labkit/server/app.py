"""The FastAPI application: guards, routes and error handlers around the hosted models.

    app = create_app([load_model("smollm2-135m-instruct"), load_model("minilm-l6-v2")], ServerConfig())

Run it with `labkit serve`, `labkit.serve(...)` (background, for notebooks) or any ASGI server.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..config import ServerConfig
from ..models import LoadedModel
from ..monitor.events import EventBus
from ..monitor.metrics import ServingMetrics
from ..monitor.tracing import Tracing
from .access_log import AccessLog, RequestContextMiddleware
from .errors import install_error_handlers
from .hardening import HostGuard, allowed_hosts_for
from .limits import BodyLimitMiddleware
from .routes import embeddings, generate, meta, responses, tokenize
from .services import Services

DESCRIPTION = """An OpenAI-compatible server for one causal LM and one encoder, with continuous batching.

Errors use OpenAI's shape `{"error": {"message", "type", "code", "param"}}`: 400 bad input (`param` names
the field), 401 missing or wrong API key, 404 unknown model, 408 body not sent in time, 413 body too large,
429 queue full (see `Retry-After`), 500 this request failed (others go on), 503 not ready, 504 timed out."""


def create_app(models: list[LoadedModel], config: ServerConfig = ServerConfig(), *,
               engine_options: dict | None = None, bus: EventBus | None = None) -> FastAPI:
    """An app hosting `models` (one causal LM, one encoder, or one of each). `engine_options` go to the
    engine (for example its batch size); the engine starts and stops with the app's lifespan. The engine
    publishes to `bus` (a new one by default, `app.state.bus`); /metrics is built from it."""
    bus = bus if bus is not None else EventBus()
    # The gauges read the services at scrape time, so they are built first and look the services up late.
    names = {m.kind: m.name for m in models}
    metrics = ServingMetrics(bus, model_name=names.get("causal-lm") or names.get("encoder", "labkit"),
                             encoder_name=names.get("encoder"), slo=config.slo,
                             running=lambda: services.num_running(), waiting=lambda: services.num_waiting(),
                             kv_usage=lambda: services.kv_usage())
    services = Services(models, config, metrics, engine_options, bus=bus)
    access_log = AccessLog(config.access_log) if config.access_log else None
    tracing = Tracing(config.otlp_traces_endpoint, "labkit-server") if config.otlp_traces_endpoint else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await services.start()
        try:
            yield
        finally:
            await services.stop(config.shutdown_grace_s)
            if access_log is not None:
                access_log.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.shutdown)  # the spans still batched are sent now

    app = FastAPI(title="labkit", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.config = config
    app.state.services = services
    app.state.metrics = metrics
    app.state.bus = bus
    app.state.tracing = tracing
    install_error_handlers(app)
    app.include_router(meta.router)
    app.include_router(generate.router)
    app.include_router(embeddings.router)
    app.include_router(responses.router)
    app.include_router(tokenize.router)
    # Middleware wraps outside-in in reverse order of adding: the Host check comes first; request ids and the
    # log see every other response, the 413 included; CORS only when origins were given.
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s)
    app.add_middleware(RequestContextMiddleware, access_log=access_log, metrics=metrics, tracing=tracing)
    app.add_middleware(HostGuard, allowed=allowed_hosts_for(config.host, config.allowed_hosts))
    return app
