"""POST /v1/responses: OpenAI's Responses API, stateless, plain or streamed (its own event names, no [DONE]).

The request becomes a chat request and starts as /v1/chat/completions starts one (`start_generation`), so
admission (429), context checks, timeouts (504) and cancelling on disconnect are the chat route's.
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..errors import APIError, bad_request
from ..limits import require_api_key
from ..responses_api import ResponseDraft, ResponsesRequest, chat_request, in_responses_terms, refuse_unsupported
from ..responses_stream import ResponseEvents
from ..schemas import ERROR_RESPONSES
from ..streaming import SSEResponse
from ..tools import tool_plan
from .generate import (_close, _collect_unless_disconnected, note_extra_fields, start_generation,
                       template_messages)

router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])
_STREAM_DOC = {"text/event-stream": {"schema": {"description": "with stream: true, the Responses API's events "
                                                "(`event: response.created` ... `response.completed`)"}}}


@router.post("/v1/responses", summary="Answer an input (OpenAI's Responses API, stateless)",
             responses={**{s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413, 429, 503, 504)},
                        200: {"content": _STREAM_DOC}})
async def create_response(body: ResponsesRequest, request: Request):
    note_extra_fields(body, request)
    refuse_unsupported(body)
    services = request.app.state.services
    engine = services.llm_for(body.model)
    if engine.tokenizer.chat_template is None:
        raise bad_request(f"{services.llm.name} has no chat template; use /v1/completions.", param="input")
    chat = chat_request(body)
    try:
        plan = tool_plan(chat)  # the chat path's tools: described, forced under a grammar, parsed back
        job = await start_generation(services, engine, template_messages(chat.messages, plan), chat, "input",
                                     request, tools=plan)
    except APIError as err:
        raise in_responses_terms(err) from None
    model = services.llm.name
    events = ResponseEvents(ResponseDraft(job.id, model, body), plan, body.max_tool_calls)
    if body.stream:
        return SSEResponse(_events(job, events), on_close=lambda: _close(job, request, model, stream=True))
    try:
        text = await _collect_unless_disconnected(job, request)
    finally:
        await _close(job, request, model, stream=False)
    events.opening()
    events.feed(text)
    events.closing(job.finish_reason, job.usage())
    return JSONResponse(events.result)


async def _events(job, events: ResponseEvents):
    for opening in events.opening():
        yield opening
    try:
        async for delta in job.stream():
            for event in events.feed(delta) if delta else ():
                yield event
    except APIError as err:  # the 200 header has gone out: the error travels as events
        for event in events.failure(err, job.usage()):
            yield event
        return
    for closing in events.closing(job.finish_reason, job.usage()):
        yield closing
