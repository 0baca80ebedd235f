"""POST /v1/completions and POST /v1/chat/completions, plain or streamed (Server-Sent Events).

Both admit the request (429 when the queue is full), run it on the engine as a `GenerationJob`, and
always end it: a full answer, an error, or a cancel when the client goes away.
"""
from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...engine.async_engine import PromptTooLong
from ..errors import APIError, bad_request
from ..generation import sampling_params
from ..limits import require_api_key
from ..schemas import ERROR_RESPONSES, ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from ..streaming import DONE, ChunkFormat, SSEResponse, full_response

router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])
_ERRORS = {s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413, 429, 503, 504)}
# OpenAPI 3.1 cannot type an event stream: the schema only describes it (chunks shaped like the JSON answer).
_STREAM_DOC = {"text/event-stream": {"schema": {"description": "with stream: true, chunks as Server-Sent Events "
                                                "(`data: {json}`), ending with `data: [DONE]`"}}}


@router.post("/v1/completions", response_model=Completion, summary="Continue a prompt",
             responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
async def completions(body: CompletionRequest, request: Request):
    services = request.app.state.services
    engine = services.llm_for(body.model)
    if body.echo:
        raise APIError(400, "echo is not supported.", param="echo", code="unsupported")
    return await _run(services, engine, body.prompt, body, "prompt", chat=False, request=request)


@router.post("/v1/chat/completions", response_model=ChatCompletion, summary="Reply to a conversation",
             responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    services = request.app.state.services
    engine = services.llm_for(body.model)
    if engine.tokenizer.chat_template is None:
        raise bad_request(f"{services.llm.name} has no chat template; use /v1/completions.", param="messages")
    if body.max_completion_tokens is not None:
        body = body.model_copy(update={"max_tokens": body.max_completion_tokens})
    return await _run(services, engine, template_messages(body.messages), body, "messages", chat=True, request=request)


def template_messages(messages) -> list[dict]:
    """Chat messages as the chat template reads them (one place, shared by /tokenize and /v1/responses)."""
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


async def _run(services, engine, prompt, body, param: str, *, chat: bool, request: Request):
    job = await start_generation(services, engine, prompt, body, param, request)
    return await _respond(job, body, chat=chat, request=request, model=services.llm.name)


async def start_generation(services, engine, prompt, body, param: str, request: Request):
    """Tokenize `prompt` (text, chat messages or ids), check the sampling fields of `body` against the context
    (400 naming `param` or the field), admit and submit: the running `GenerationJob`."""
    try:
        ids = await engine.encode(prompt)  # in a worker thread; a text too long for any tokenization: refused
    except PromptTooLong as err:
        raise bad_request(str(err), param=param, code="context_length_exceeded") from None
    except ValueError as err:
        code = "context_length_exceeded" if "context" in str(err) else "invalid_value"
        raise bad_request(str(err), param=param, code=code) from None
    params = sampling_params(body, len(ids), engine.max_model_len)
    return services.start_job(request.state.request_id, ids, params)


def _log(request: Request, job, model: str, stream: bool) -> None:
    request.state.log.update(model=model, stream=stream, prompt_tokens=job.prompt_tokens,
                             completion_tokens=job.completion_tokens, finish_reason=job.finish_reason,
                             ttft_ms=None if job.ttft_s is None else round(job.ttft_s * 1000, 2))


async def _respond(job, body, *, chat: bool, request: Request, model: str):
    created = int(time.time())
    request_id = ("chatcmpl-" if chat else "cmpl-") + job.id.removeprefix("req-")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(_chunks(job, ChunkFormat(chat, request_id, model, created), include_usage),
                           on_close=lambda: _close(job, request, model, stream=True))
    try:
        text = await _collect_unless_disconnected(job, request)
    finally:
        await _close(job, request, model, stream=False)
    return JSONResponse(full_response(chat, request_id, model, created, text, job.finish_reason, job.usage()))


async def _chunks(job, fmt: ChunkFormat, include_usage: bool):
    first = fmt.first()
    if first:
        yield first
    try:
        async for text in job.stream():
            if text:
                yield fmt.delta(text)
        yield fmt.finish(job.finish_reason)
        if include_usage:
            yield fmt.usage(job.usage())
    except APIError as err:  # the 200 header has gone out: the error travels as an event
        yield err.sse()
    yield DONE


async def _close(job, request: Request, model: str, stream: bool) -> None:
    await job.close()
    _log(request, job, model, stream)


async def _collect_unless_disconnected(job, request: Request) -> str:
    """Run the job to its end, but cancel it as soon as the client disconnects."""
    async def collect():
        return "".join([text async for text in job.stream()])

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collector, watcher = asyncio.create_task(collect()), asyncio.create_task(watch())
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
    if collector not in done:
        raise APIError(499, "The client closed the connection.", code="client_closed")
    return collector.result()
