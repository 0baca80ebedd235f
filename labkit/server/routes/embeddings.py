"""POST /v1/embeddings: texts in, L2-normalised vectors out, through the dynamic batcher."""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..embeddings import encode_vector
from ..errors import bad_request
from ..limits import require_api_key
from ..schemas import ERROR_RESPONSES, EmbeddingRequest, EmbeddingResponse

router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])


@router.post("/v1/embeddings", response_model=EmbeddingResponse, summary="Embed one text or a list of texts",
             responses={s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413, 429, 503)})
async def create_embeddings(body: EmbeddingRequest, request: Request):
    service = request.app.state.services.encoder_for(body.model)
    if body.dimensions is not None and body.dimensions != service.dimensions:
        raise bad_request(f"{service.name} gives {service.dimensions}-dimensional vectors; 'dimensions' must be "
                          f"{service.dimensions} or left out.", param="dimensions")
    texts = [body.input] if isinstance(body.input, str) else body.input
    request.state.log.update(model=service.name, inputs=len(texts))
    embedded = await service.embed(texts)
    tokens = sum(e.tokens for e in embedded)
    request.state.log.update(prompt_tokens=tokens)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(e.vector, body.encoding_format)}
                 for i, e in enumerate(embedded)],
        "model": service.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
