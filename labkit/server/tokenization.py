"""POST /tokenize and /detokenize bodies, in vLLM's shapes, and the tokenizer calls behind them.

    {"model", "prompt", "add_special_tokens"}      -> {"count", "max_model_len", "tokens", "token_strs"}
    {"model", "messages", "add_generation_prompt"} -> the same, through the chat template
    {"model", "tokens"}                            -> {"prompt"}

The token ids are exactly those the engine runs: a text prompt is tokenized as /v1/completions tokenizes it,
chat messages as /v1/chat/completions does (the same chat helper, so a message's text never becomes a
control token). Counting a prompt longer than the context is allowed: that is what a client asks to learn.
"""
from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..engine.chat import chat_token_ids
from .errors import bad_request
from .schemas import ChatMessage, Text


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest (`prompt`) and TokenizeChatRequest (`messages`) as one body, so a
    missing or wrong field is named as the client wrote it; exactly one of the two is given."""
    model_config = ConfigDict(extra="allow")  # unknown fields: accepted, logged once per name (as chat)

    model: Text | None = None
    prompt: Annotated[Text, Field(max_length=1_000_000)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = Field(None, description="Add the tokenizer's special tokens (BOS) to a "
                                                              "prompt: default true, as /v1/completions does. "
                                                              "For messages only false (the template places them).")
    add_generation_prompt: bool = Field(True, description="Messages end with the assistant turn's opening, as "
                                                          "/v1/chat/completions does.")
    continue_final_message: bool = Field(False, description="Not supported (must be false).")
    return_token_strs: bool = Field(False, description="Also return each token's string.")


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: Text | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


async def tokenize(tokenizer, body: TokenizeRequest, template_messages) -> list[int]:
    """The token ids of a tokenize body (in a worker thread: a long text must not hold the event loop).
    `template_messages` turns chat messages into what the template reads (the chat route's own helper)."""
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("Send either 'prompt' (a text) or 'messages' (a chat), not both nor neither.",
                          param="prompt" if body.prompt is None else "messages", code="missing")
    if body.prompt is not None:
        special = body.add_special_tokens is not False
        return await asyncio.to_thread(lambda: tokenizer(body.prompt, add_special_tokens=special)["input_ids"])
    if getattr(tokenizer, "chat_template", None) is None:
        raise bad_request("This model has no chat template; tokenize a prompt instead.", param="messages")
    for field in ("continue_final_message", "add_special_tokens"):
        if getattr(body, field):
            raise bad_request(f"{field} is not supported for chat messages; leave it false.", param=field,
                              code="unsupported")
    try:
        return await asyncio.to_thread(chat_token_ids, tokenizer, template_messages(body.messages),
                                       body.add_generation_prompt)
    except ValueError as err:  # no chat template, or a control token the template would not keep verbatim
        raise bad_request(str(err), param="messages") from None


def tokenize_response(tokenizer, ids: list[int], max_model_len: int, token_strs: bool) -> dict:
    return {"count": len(ids), "max_model_len": max_model_len, "tokens": ids,
            "token_strs": tokenizer.convert_ids_to_tokens(ids) if token_strs else None}


def detokenize(tokenizer, ids: list[int]) -> str:
    """The text of `ids`, special tokens kept (so a chat template's tokens come back as they went in)."""
    size = len(tokenizer)
    bad = next((t for t in ids if not 0 <= t < size), None)
    if bad is not None:
        raise bad_request(f"Token id {bad} is outside this tokenizer's vocabulary [0, {size}).", param="tokens")
    return tokenizer.decode(ids)
