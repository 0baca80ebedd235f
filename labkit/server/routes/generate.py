"""POST /v1/completions and POST /v1/chat/completions, plain or streamed (Server-Sent Events).

Both admit the request (429 when the queue is full), run each choice (prompts x n) on the engine as a
`GenerationJob` (choices.py), and always end them: a full answer, an error, or a cancel when the client goes
away. reply.py shapes the answer (text, echo, log-probabilities) as OpenAI does.
"""
from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ...engine.async_engine import PromptTooLong
from ..errors import APIError, bad_request
from ..choices import ChoiceSet
from ..generation import generation_defaults, sampling_params
from ..limits import require_api_key
from ..reply import Reply
from ..schemas import (ERROR_RESPONSES, MAX_PROMPTS, ChatCompletion, ChatCompletionRequest, Completion,
                       CompletionRequest)
from ..streaming import DONE, SSEResponse
from ..structured import compile_constraint, requested
from ..tools import ToolPlan, template_messages, tool_plan
from ..traces import trace_generation

log = logging.getLogger("labkit.server")
router = APIRouter(tags=["openai"], dependencies=[Depends(require_api_key)])
_ERRORS = {s: ERROR_RESPONSES[s] for s in (400, 401, 404, 413, 429, 503, 504)}
# OpenAPI 3.1 cannot type an event stream: the schema only describes it (chunks shaped like the JSON answer).
_STREAM_DOC = {"text/event-stream": {"schema": {"description": "with stream: true, chunks as Server-Sent Events "
                                                "(`data: {json}`), ending with `data: [DONE]`"}}}


@router.post("/v1/completions", response_model=Completion, summary="Continue a prompt (or a list of them)",
             responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
async def completions(body: CompletionRequest, request: Request):
    services = request.app.state.services
    engine = services.llm_for(body.model)
    note_extra_fields(body, request)
    prompt = body.prompt
    prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else list(prompt)
    if len(prompts) * body.n > MAX_PROMPTS:
        raise bad_request(f"{len(prompts)} prompts x n={body.n} asks for {len(prompts) * body.n} choices; at most "
                          f"{MAX_PROMPTS} per request.", param="n")
    return await _run(services, engine, prompts, body, "prompt", chat=False, request=request)


@router.post("/v1/chat/completions", response_model=ChatCompletion, summary="Reply to a conversation",
             responses={**_ERRORS, 200: {"content": _STREAM_DOC}})
async def chat_completions(body: ChatCompletionRequest, request: Request):
    services = request.app.state.services
    engine = services.llm_for(body.model)
    note_extra_fields(body, request)
    if engine.tokenizer.chat_template is None:
        raise bad_request(f"{services.llm.name} has no chat template; use /v1/completions.", param="messages")
    if body.max_completion_tokens is not None:
        body = body.model_copy(update={"max_tokens": body.max_completion_tokens})
    plan = tool_plan(body)
    return await _run(services, engine, [template_messages(body.messages, plan)], body, "messages", chat=True,
                      request=request, tools=plan)


def note_extra_fields(body, request: Request) -> None:
    """Fields this server does not know are accepted and logged once per name, as vLLM does."""
    extra = body.model_extra or {}
    logged = request.app.state.__dict__.setdefault("logged_extra_fields", set())
    for name in sorted(set(extra) - logged):
        logged.add(name)
        log.warning("request field %r is not known to this server and was ignored (logged once per name)", name)


async def _encode(engine, prompt, param: str) -> list[int]:
    try:
        return await engine.encode(prompt)  # in a worker thread; a text too long for any tokenization: refused
    except PromptTooLong as err:
        raise bad_request(str(err), param=param, code="context_length_exceeded") from None
    except ValueError as err:
        code = "context_length_exceeded" if "context" in str(err) else "invalid_value"
        raise bad_request(str(err), param=param, code=code) from None


def _params(services, engine, body, ids: list[int], constraint=None):
    return sampling_params(body, len(ids), engine.max_model_len, generation_defaults(services.llm.model),
                           engine.engine.vocab_size, structured_outputs=constraint)


async def output_constraint(engine, body, plan: ToolPlan | None):
    """The grammar the output must follow (response_format, structured_outputs, or a forced tool call),
    compiled before the request is admitted: 400 naming the field when it does not compile."""
    constraint, param = requested(body)
    if plan is not None and constraint is not None:
        raise bad_request(f"{param.split('.')[0]} cannot be combined with tools (unless tool_choice is none): "
                          f"tool calls have their own format.", param=param.split(".")[0])
    if plan is not None:
        constraint, param = plan.constraint(), "tools"
    if constraint is not None:
        await compile_constraint(engine, constraint, param)
    return constraint


async def _run(services, engine, prompts: list, body, param: str, *, chat: bool, request: Request,
               tools: ToolPlan | None = None):
    constraint = await output_constraint(engine, body, tools)
    encoded = [await _encode(engine, prompt, param) for prompt in prompts]
    choices = ChoiceSet(services, request.state.request_id, encoded,
                        [_params(services, engine, body, ids, constraint) for ids in encoded])
    await choices.start()
    reply = Reply(chat, body, engine.tokenizer, prompts, encoded, services.llm.name,
                  ("chatcmpl-" if chat else "cmpl-") + request.state.request_id.removeprefix("req-"), tools)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return SSEResponse(_chunks(choices, reply, include_usage),
                           on_close=lambda: _close_choices(choices, request, reply.model, stream=True))
    try:
        await _until_disconnected(choices.collect(), request)
    finally:
        await _close_choices(choices, request, reply.model, stream=False)
    return JSONResponse(reply.full(choices))


async def start_generation(services, engine, prompt, body, param: str, request: Request,
                           tools: ToolPlan | None = None):
    """Tokenize `prompt` (text, chat messages or ids), check the sampling fields of `body` against the context
    (400 naming `param` or the field) and its output constraint, admit and submit: the running
    `GenerationJob`."""
    constraint = await output_constraint(engine, body, tools)
    ids = await _encode(engine, prompt, param)
    return services.start_job(request.state.request_id, ids, _params(services, engine, body, ids, constraint))


async def _chunks(choices: ChoiceSet, reply: Reply, include_usage: bool):
    for choice in choices.choices:
        first = reply.format.first(choice.index)
        if first:
            yield first
    try:
        async for choice, delta in choices.events():
            for chunk in reply.stream_chunks(choice, delta):
                yield chunk
        if include_usage:
            yield reply.format.usage(choices.usage())
    except APIError as err:  # the 200 header has gone out: the error travels as an event
        yield err.sse()
    yield DONE


async def _close_choices(choices: ChoiceSet, request: Request, model: str, stream: bool) -> None:
    await choices.close()
    usage = choices.usage()
    ttfts = [c.job.ttft_s for c in choices.choices if c.job is not None and c.job.ttft_s is not None]
    request.state.log.update(model=model, stream=stream, prompt_tokens=usage["prompt_tokens"],
                             completion_tokens=usage["completion_tokens"], finish_reason=choices.finish_reason,
                             cached_tokens=usage["prompt_tokens_details"]["cached_tokens"],
                             ttft_ms=round(min(ttfts) * 1000, 2) if ttfts else None)
    trace_generation(request, [c.job for c in choices.choices if c.job is not None])


def _log(request: Request, job, model: str, stream: bool) -> None:
    request.state.log.update(model=model, stream=stream, prompt_tokens=job.prompt_tokens,
                             completion_tokens=job.completion_tokens, finish_reason=job.finish_reason,
                             cached_tokens=job.cached_tokens,
                             ttft_ms=None if job.ttft_s is None else round(job.ttft_s * 1000, 2))
    trace_generation(request, [job])


async def _close(job, request: Request, model: str, stream: bool) -> None:
    await job.close()
    _log(request, job, model, stream)


async def _collect_unless_disconnected(job, request: Request) -> str:
    """Run the job to its end, but cancel it as soon as the client disconnects."""
    async def collect():
        return "".join([text async for text in job.stream()])

    return await _until_disconnected(collect(), request)


async def _until_disconnected(work, request: Request):
    """Await `work`, but cancel it as soon as the client disconnects (499)."""
    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    collector, watcher = asyncio.create_task(work), asyncio.create_task(watch())
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not collector.done():
            collector.cancel()
    if collector not in done:
        raise APIError(499, "The client closed the connection.", code="client_closed")
    return collector.result()
