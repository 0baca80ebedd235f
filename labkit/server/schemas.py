"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Requests are validated strictly on what the server uses (types and ranges, so the OpenAPI document says
what is accepted): every value is checked here against what the engine can represent, so no request can
reach a tensor with a value that breaks it. Text must be valid Unicode (JSON's "\\ud83d" escape alone is a
lone surrogate that no tokenizer can encode). Fields this server does not know are accepted and logged once
per name, as vLLM does (`extra_fields`); fields it knows but cannot honour are a 400 naming them. A sampling
field left out (None) takes the model's generation_config.json default, then the engine's, as vLLM does.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..engine.sampling_params import INT64_MAX, INT64_MIN, MAX_LOGPROBS

MAX_N = 16  # choices per prompt: bounds n x max_tokens (the context bounds max_tokens)
MAX_PROMPTS = 64  # prompts in one batched completions request (and prompts x n choices in all)


def _valid_unicode(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"the text holds a lone UTF-16 surrogate ({text[err.start]!r} at character {err.start}), "
                         f"which is not valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
MAX_JSON_DEPTH = 64  # nesting of a JSON value (a schema, a tool's parameters): real schemas nest a few levels


def _shallow(value):
    """Refuse JSON nested past MAX_JSON_DEPTH here, counted without recursion: schemas are walked recursively
    further on (the grammar compiler, the strict-schema rewrite), where a deep one would end in RecursionError."""
    level = [(value, 0)]
    while level:
        item, depth = level.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"the value nests deeper than {MAX_JSON_DEPTH} levels")
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        level += [(child, depth + 1) for child in children if isinstance(child, (dict, list))]
    return value


JSONObject = Annotated[dict[str, Any], AfterValidator(_shallow)]
Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0 is greedy; up to 2.")]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Count = Annotated[int, Field(ge=1, le=INT64_MAX)]
TokenId = Annotated[int, Field(ge=0, le=INT64_MAX)]
Stop = Text | Annotated[list[Text], Field(max_length=4)] | None
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="allow")  # unknown fields: accepted, logged once per name (vLLM's behaviour)

    model: Text | None = Field(None, description="The served model's id (see /v1/models); omitted means that one.")
    max_tokens: Count | None = Field(None, description="Most tokens to generate; default: the model's "
                                     "generation_config max_new_tokens, else what the context leaves, capped "
                                     "at the server's default.")
    temperature: Temperature | None = Field(None, description="Default: generation_config.json's, else 1.")
    top_p: TopP | None = Field(None, description="Default: generation_config.json's, else 1.")
    top_k: int | None = Field(None, ge=-1, le=INT64_MAX, description="Sample from the k likeliest tokens "
                              "(0 or -1: all). Default: generation_config.json's, else all.")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the "
                                "likeliest (vLLM). Default: generation_config.json's, else 0.")
    n: int = Field(1, ge=1, le=MAX_N, description=f"Choices per prompt (up to {MAX_N}); siblings share the "
                   f"prompt's KV pages through the prefix cache.")
    stop: Stop = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=256)] | None = Field(
        None, description="Token ids that end the choice (vLLM).")
    seed: int | None = Field(None, ge=INT64_MIN, le=INT64_MAX, description="Any int64; with n > 1, sibling i "
                             "uses seed + i.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repetition_penalty: float | None = Field(None, ge=0.01, le=100.0, description="vLLM's: >1 discourages tokens "
                                             "of the prompt and the output. Default: generation_config.json's, else 1.")
    logit_bias: dict[Text, Bias] | None = Field(None, max_length=1024, description="Token id (as a string) -> "
                                                "bias in [-100, 100] added to its logit.")
    user: Text | None = None
    # vLLM's extensions, for benchmarks and tests that need exact output lengths
    ignore_eos: bool = Field(False, description="Keep generating past the end-of-sequence token.")
    min_tokens: int = Field(0, ge=0, le=INT64_MAX, description="The end-of-sequence token is masked until this many tokens.")
    skip_special_tokens: bool = Field(True, description="Leave special tokens out of the text (vLLM).")
    # Structured outputs (structured.py): OpenAI's response_format, or vLLM's structured_outputs (one of the two)
    response_format: JSONObject | None = Field(None, description="{'type': 'text' | 'json_object' | "
                                                   "'json_schema', 'json_schema': {'name', 'schema', 'strict'}}: "
                                                   "the output follows it (enforced by a grammar).")
    structured_outputs: JSONObject | None = Field(None, description="vLLM's: exactly one of json, regex, "
                                                      "choice, grammar, json_object, structural_tag, with "
                                                      "disable_any_whitespace, whitespace_pattern.")
    # vLLM's names before 0.12, mapped onto structured_outputs
    guided_json: JSONObject | Text | None = None
    guided_regex: Text | None = None
    guided_choice: list[Text] | None = None
    guided_grammar: Text | None = None
    guided_whitespace_pattern: Text | None = None


TokenIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: Annotated[Text, Field(max_length=1_000_000)] | TokenIds \
        | Annotated[list[Annotated[Text, Field(max_length=1_000_000)]], Field(min_length=1, max_length=MAX_PROMPTS)] \
        | Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        ..., description="Text or token ids to continue, or a list of them (choices are indexed prompt-major).")
    echo: bool = Field(False, description="Put the prompt before each choice's text (and its log-probabilities).")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Log-probabilities of each token and of "
                                 f"this many likeliest ones (up to {MAX_LOGPROBS}, vLLM's bound; OpenAI's is 5).")
    best_of: int | None = Field(None, ge=1, le=MAX_N, description="Only equal to n (no server-side ranking).")
    suffix: Text | None = Field(None, description="Not supported (no fill-in-the-middle): must be left out.")


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Text
    arguments: Text = Field(..., description="The arguments as a JSON text.")


class ToolCall(BaseModel):
    id: Text
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(BaseModel):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: Text | None = None
    parameters: JSONObject | None = Field(None, description="A JSON schema of the arguments.")
    strict: bool | None = None


class FunctionTool(BaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: Text


class NamedToolChoice(BaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None
    name: Text | None = None
    tool_calls: list[ToolCall] | None = Field(None, description="An assistant message's earlier tool calls.")
    tool_call_id: Text | None = Field(None, description="A tool message: the call it answers.")

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Count | None = Field(None, description="Newer name for max_tokens; wins if both.")
    logprobs: bool = Field(False, description="Log-probability of each output token.")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="With logprobs: this many likeliest "
                                     f"tokens at each position (up to {MAX_LOGPROBS}).")
    tools: Annotated[list[FunctionTool], Field(max_length=128)] | None = Field(
        None, description="Function tools the model may call (tools.py: described in a system message).")
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = Field(
        None, description="Default: auto with tools, none without. required and a named function are "
                          "generated under the call's JSON-schema grammar.")
    parallel_tool_calls: bool | None = Field(None, description="Default true: one or more calls; false: one.")


class EmbeddingRequest(BaseModel):
    input: Text | Annotated[list[Text], Field(min_length=1, max_length=2048)] = Field(
        ..., description="A text or a list of texts to embed.")
    model: Text | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, le=INT64_MAX)
    user: Text | None = None


# ---- responses (for the OpenAPI document; routes build the same shapes as plain dicts) ----

class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(0, description="Prompt tokens whose keys and values came from the prefix cache.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "abort"] | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length", "tool_calls", "abort"] | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "labkit"
    kind: str = Field(..., description="causal-lm (completions, chat) or encoder (embeddings)")
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


ERROR_RESPONSES = {status: {"model": ErrorResponse, "description": description} for status, description in {
    400: "Bad input: malformed JSON, a field of the wrong type or out of range (`param` names it), a prompt "
         "longer than the context",
    401: "Missing or wrong API key",
    404: "Unknown model",
    413: "Body larger than the server's limit",
    429: "Queue full; retry after the Retry-After header's seconds",
    503: "Not ready",
    504: "Timed out",
}.items()}
