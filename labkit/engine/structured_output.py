"""Structured outputs: a request's constraint, compiled once into a grammar, enforced as a token bitmask.

`StructuredOutputsParams` names the constraint as vLLM does (`json`, `json_object`, `regex`, `choice`,
`grammar`, `structural_tag`; exactly one). The engine owns one `StructuredOutputManager`, made from the
tokenizer and the width of the model's logits (an LM head may be wider than the tokenizer: the extra ids are
never allowed). It compiles each distinct constraint once (llguidance: JSON schema, regex, Lark or GBNF) and
keeps it by key; every request gets a copy of the compiled matcher, which follows the tokens it accepts.

Each decode step, `fill_bitmask` writes one row of 32-token words per constrained request (a set bit is an
allowed token), and `apply` sets the logits of the other tokens to -inf on those rows only. A batch with no
constrained request costs nothing: `fill_bitmask` returns None. Once a matcher `is_terminated()` nothing but
EOS may follow: the output is complete and the request can finish.

llguidance rather than xgrammar (vLLM's default): xgrammar requires triton on Linux (286 MB, 1 GB unpacked,
with NVIDIA's ptxas), which a CPU machine never uses; llguidance has no dependencies and is vLLM's `guidance`
backend.
"""
from __future__ import annotations

import json as jsonlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, fields

import llguidance
import llguidance.hf
import torch

CONSTRAINTS = ("json", "json_object", "regex", "choice", "grammar", "structural_tag")
# Row b of this table: which of byte value b's 8 bits are clear (tokens a bitmask byte forbids), lowest first.
_FORBIDDEN = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1) == 0


class StructuredOutputError(ValueError):
    """A constraint that does not compile. `kind` names the constraint field ("json", "regex", ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class StructuredOutputsParams:
    """One request's constraint, with vLLM's field names. Exactly one of the constraint fields is set.

    `json` is a JSON schema (dict or JSON text; kept as text, in the order given, since property order is the
    order of generation); `json_object` any JSON object; `regex` a full-match pattern (\\d and \\w ASCII, as
    in JavaScript); `choice` exactly one of the strings; `grammar` Lark or GBNF/EBNF (`root ::= ...`) text;
    `structural_tag` vLLM's JSON text `{"structures": [{"begin", "schema", "end"}], "triggers": [...]}`.
    """

    json: str | dict | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: str | None = None
    disable_any_whitespace: bool = False  # JSON: no whitespace between tokens at all
    # JSON: objects that list properties allow no others unless they say so (xgrammar's strict mode, vLLM's
    # default). Always so here; the field is accepted for vLLM's sake.
    disable_additional_properties: bool = False
    whitespace_pattern: str | None = None  # JSON: the regex whitespace must match

    def __post_init__(self) -> None:
        if isinstance(self.json, Mapping):
            try:
                object.__setattr__(self, "json", jsonlib.dumps(self.json))
            except RecursionError:
                raise StructuredOutputError("json", _describe("json", "nested too deeply")) from None
        if self.choice is not None:
            if isinstance(self.choice, str) or not all(isinstance(c, str) for c in self.choice) or not self.choice:
                raise StructuredOutputError("choice", "choice must be a non-empty list of strings.")
            object.__setattr__(self, "choice", tuple(self.choice))
        if self.json_object is False:
            object.__setattr__(self, "json_object", None)
        given = [name for name in CONSTRAINTS if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"structured outputs take exactly one of {', '.join(CONSTRAINTS)}; got "
                             f"{', '.join(given) or 'none'}.")

    @property
    def kind(self) -> str:
        return next(name for name in CONSTRAINTS if getattr(self, name) is not None)

    @property
    def key(self) -> tuple:
        """Equal for constraints that compile to the same grammar: the compile cache's key."""
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_response_format(cls, response_format: Mapping | None) -> StructuredOutputsParams | None:
        """OpenAI's `response_format` (`text`, `json_object`, `json_schema`) or vLLM's `structural_tag`.
        None for free text; ValueError (naming the part that is wrong) for anything else."""
        if response_format is None:
            return None
        kind = response_format.get("type") if isinstance(response_format, Mapping) else None
        if kind == "text":
            return None
        if kind == "json_object":
            return cls(json_object=True)
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, Mapping) else None
            if not isinstance(schema, (Mapping, str)):
                raise StructuredOutputError("json", "response_format.json_schema.schema must be a JSON schema.")
            return cls(json=schema)
        if kind == "structural_tag":
            return cls(structural_tag=jsonlib.dumps(dict(response_format)))
        raise StructuredOutputError("response_format", "response_format.type must be one of text, json_object, "
                                                       f"json_schema, structural_tag; got {kind!r}.")


class GrammarMatcher:
    """One request's position in its grammar: fed each sampled token, asked what may come next."""

    __slots__ = ("params", "_matcher")

    def __init__(self, params: StructuredOutputsParams, matcher: llguidance.LLMatcher):
        self.params = params
        self._matcher = matcher

    def accept(self, token_id: int) -> bool:
        """Advance by one sampled token; False if the grammar forbids it (then the matcher is in error)."""
        return self._matcher.consume_token(int(token_id))

    def is_terminated(self) -> bool:
        """The output is complete: nothing but EOS may follow (also true after an error: see `error`)."""
        return self._matcher.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is a whole match (more may still follow)."""
        return self._matcher.is_accepting()

    @property
    def error(self) -> str | None:
        return (self._matcher.get_error() or "error") if self._matcher.is_error() else None


class StructuredOutputManager:
    """Per engine: the tokenizer as the grammar library sees it, the compile cache, the batch bitmask."""

    def __init__(self, tokenizer, vocab_size: int, *, cache_size: int = 256, max_spec_chars: int = 65536,
                 num_threads: int | None = None):
        self.vocab_size = vocab_size  # the logits' width, not len(tokenizer)
        self.words = (vocab_size + 31) // 32
        self.cache_size = cache_size
        self.max_spec_chars = max_spec_chars
        eos = tokenizer.eos_token_id
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        self._executor = llguidance.LLExecutor(num_threads)
        self._cache: OrderedDict[tuple, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()  # the server compiles on its thread, the engine loop on its own
        self.num_compiled = 0
        self.num_cache_hits = 0
        self._bitmask = torch.empty(0, self.words, dtype=torch.int32)

    def compile(self, params: StructuredOutputsParams) -> GrammarMatcher:
        """A fresh matcher for one request; the grammar itself is compiled once per distinct `params.key`.
        Raises StructuredOutputError (a ValueError) saying why a constraint does not compile."""
        key = params.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                self.num_cache_hits += 1
        if compiled is None:  # outside the lock: a large grammar takes a while (llguidance drops the GIL)
            grammar = self._grammar(params)
            try:
                compiled = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            except (ValueError, RuntimeError) as e:
                raise StructuredOutputError(params.kind, _describe(params.kind, str(e))) from e
            if compiled.is_error():
                raise StructuredOutputError(params.kind, _describe(params.kind, compiled.get_error()))
            with self._lock:
                self.num_compiled += 1
                self._cache[key] = compiled
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            return GrammarMatcher(params, compiled.deep_copy())

    def _grammar(self, params: StructuredOutputsParams) -> str:
        kind = params.kind
        spec = getattr(params, kind)
        size = sum(map(len, spec)) if kind == "choice" else len(spec) if isinstance(spec, str) else 0
        if size > self.max_spec_chars:
            raise StructuredOutputError(kind, f"{kind} is {size:,} characters, over the limit of "
                                              f"{self.max_spec_chars:,}.")
        try:
            if kind in ("json", "json_object"):
                schema = _no_additional_properties(jsonlib.loads(spec)) if kind == "json" else {"type": "object"}
                options = {"whitespace_flexible": not params.disable_any_whitespace}
                if params.whitespace_pattern is not None:
                    options["whitespace_pattern"] = params.whitespace_pattern
                return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=options)
            if kind == "regex":  # JavaScript's classes (as xgrammar, JSON Schema): \d is [0-9]
                return llguidance.LLMatcher.grammar_from_lark(f"start: /{llguidance.regex_to_lark(spec, 'dw')}/")
            if kind == "choice":
                return llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(map(jsonlib.dumps, spec)))
            if kind == "grammar":
                return llguidance.grammar_from("grammar", spec)
            tag = jsonlib.loads(spec)
            tags = [llguidance.StructTag(trigger=trigger, begin=s["begin"], grammar=s["schema"], end=s["end"])
                    for s in tag["structures"] for trigger in tag["triggers"] if s["begin"].startswith(trigger)]
            return llguidance.StructTag.to_grammar(tags)
        except StructuredOutputError:
            raise
        except (ValueError, TypeError, KeyError, AssertionError) as e:  # JSON text, GBNF or tag shape
            raise StructuredOutputError(kind, _describe(kind, str(e) or type(e).__name__)) from e
        except RecursionError:  # a schema nested hundreds deep: refused here, whoever calls the engine
            raise StructuredOutputError(kind, _describe(kind, "nested too deeply")) from None

    def fill_bitmask(self, matchers_by_row: Mapping[int, GrammarMatcher],
                     batch_size: int) -> torch.Tensor | None:
        """A (batch_size, words) int32 bitmask with the rows of `matchers_by_row` filled with what each
        matcher allows next (other rows are left as they are: `apply` never reads them). None when no row
        has a grammar, so an unconstrained batch pays nothing. The tensor is reused by the next call."""
        if not matchers_by_row:
            return None
        if self._bitmask.shape[0] < batch_size:
            self._bitmask = torch.empty(batch_size, self.words, dtype=torch.int32)
        bitmask = self._bitmask[:batch_size]
        self._executor.unsafe_compute_mask_ptr([(m._matcher, row) for row, m in matchers_by_row.items()],
                                               bitmask.data_ptr(), self.words * 4, batch_size)
        return bitmask

    def apply(self, logits: torch.Tensor, bitmask: torch.Tensor, rows: list[int]) -> None:
        """Set every token `bitmask` forbids to -inf, in place, on `rows` of `logits` only."""
        if not rows:
            return
        index = torch.tensor(rows, dtype=torch.long)
        octets = bitmask.index_select(0, index).view(torch.uint8).flatten().int()  # little-endian: token order
        forbidden = _FORBIDDEN.index_select(0, octets).view(len(rows), -1)[:, :logits.shape[-1]]
        forbidden = forbidden.to(logits.device, non_blocking=True)
        first = rows[0]
        if rows == list(range(first, first + len(rows))):  # a run of rows: mask the view itself
            logits[first:first + len(rows)].masked_fill_(forbidden, float("-inf"))
        else:
            index = index.to(logits.device)
            logits.index_copy_(0, index, logits.index_select(0, index).masked_fill_(forbidden, float("-inf")))


def _describe(kind: str, error: str) -> str:
    what = {"json": "JSON schema", "json_object": "JSON object grammar", "regex": "regex", "choice": "choice",
            "grammar": "grammar", "structural_tag": "structural tag"}[kind]
    return f"invalid {what}: {error.strip()}"


def _no_additional_properties(schema):
    """The schema with "additionalProperties": false on every object schema that lists properties and does
    not say otherwise, as xgrammar's strict mode reads a schema (a 135M model otherwise adds keys forever)."""
    if isinstance(schema, list):
        return [_no_additional_properties(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _no_additional_properties(v) for k, v in schema.items()}
    if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out
