"""POST /tokenize and POST /detokenize (vLLM's extensions): the hosted model's own tokenizer over HTTP, so a
client can count a prompt's tokens against `max_model_len` before sending it. Either hosted model works
(the LLM by default); neither runs the engine."""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import model_not_found
from ..limits import require_api_key
from ..schemas import ERROR_RESPONSES
from ..tokenization import (DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse, detokenize,
                            tokenize, tokenize_response)
from .generate import note_extra_fields, template_messages

router = APIRouter(tags=["vllm"], dependencies=[Depends(require_api_key)])
_ERRORS = {s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413)}


def _tokenizer_for(services, name: str | None) -> tuple[object, int]:
    """(tokenizer, max_model_len) of the model `name` names: the LLM when it is left out and one is hosted."""
    if services.llm is not None and name in (None, services.llm.name):
        return services.engine.tokenizer, services.engine.max_model_len
    if services.encoder is not None and name in (None, services.encoder.name):
        return services.encoder.loaded.tokenizer, services.encoder.max_model_len
    raise model_not_found(name, services.names())


@router.post("/tokenize", response_model=TokenizeResponse, summary="Token ids of a prompt or of chat messages",
             responses=_ERRORS)
async def tokenize_route(body: TokenizeRequest, request: Request):
    note_extra_fields(body, request)
    tokenizer, max_model_len = _tokenizer_for(request.app.state.services, body.model)
    ids = await tokenize(tokenizer, body, template_messages)
    return JSONResponse(tokenize_response(tokenizer, ids, max_model_len, body.return_token_strs))


@router.post("/detokenize", response_model=DetokenizeResponse, summary="The text of token ids", responses=_ERRORS)
async def detokenize_route(body: DetokenizeRequest, request: Request):
    note_extra_fields(body, request)
    tokenizer, _ = _tokenizer_for(request.app.state.services, body.model)
    return JSONResponse({"prompt": await asyncio.to_thread(detokenize, tokenizer, body.tokens)})
