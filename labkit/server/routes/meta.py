"""GET /health (alive), /ready (can serve), /v1/models, /v1/models/{id}, /version, /metrics (Prometheus text)."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from ... import __version__
from ...monitor.metrics import CONTENT_TYPE
from ..errors import model_not_found
from ..limits import require_api_key
from ..schemas import ERROR_RESPONSES, ModelCard, ModelList

router = APIRouter()


@router.get("/health", tags=["operations"], summary="Liveness: the process answers and its engine loop runs")
async def health(request: Request):
    problem = request.app.state.services.problem()
    if problem:
        return JSONResponse({"status": "unhealthy", "reason": problem}, status_code=503)
    return {"status": "ok"}


@router.get("/ready", tags=["operations"], summary="Readiness: models loaded, accepting requests",
            responses={503: ERROR_RESPONSES[503]})
async def ready(request: Request):
    services = request.app.state.services
    if not services.ready:
        return JSONResponse({"status": "not ready", "reason": services.problem() or "starting or shutting down"},
                            status_code=503)
    return {"status": "ready", "models": services.model_ids()}


@router.get("/metrics", tags=["operations"], summary="Prometheus metrics (text exposition format)",
            response_class=PlainTextResponse)
async def metrics(request: Request):
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models", tags=["openai"], summary="The models this server hosts", response_model=ModelList,
            dependencies=[Depends(require_api_key)], responses={401: ERROR_RESPONSES[401]})
async def list_models(request: Request):
    return JSONResponse({"object": "list", "data": request.app.state.services.model_cards()})


# `:path`: a model named by its local folder ("/models/llama") is still one id.
@router.get("/v1/models/{model_id:path}", tags=["openai"], summary="One hosted model", response_model=ModelCard,
            dependencies=[Depends(require_api_key)], responses={s: ERROR_RESPONSES[s] for s in (401, 404)})
async def retrieve_model(model_id: str, request: Request):
    services = request.app.state.services
    card = next((c for c in services.model_cards() if c["id"] == model_id), None)
    if card is None:
        raise model_not_found(model_id, services.names())
    return JSONResponse(card)


@router.get("/version", tags=["operations"], summary="labkit's version (from the installed package)")
async def version():
    return {"version": __version__}
