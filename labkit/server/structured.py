"""A request's output constraint: OpenAI's `response_format`, vLLM's `structured_outputs` (or its names before
0.12, `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`), or a tool call's grammar (tools.py).

At most one source may constrain a request (two are a 400). The constraint is compiled here, in a worker
thread, before the request is admitted: one that does not compile is a 400 whose `param` names where it came
from (`response_format`, `structured_outputs.regex`, ...), and the engine finds it in its compile cache.
"""
from __future__ import annotations

import asyncio
import dataclasses

from ..engine.structured_output import StructuredOutputError, StructuredOutputsParams
from .errors import bad_request

# vLLM's names before 0.12 -> structured_outputs' keys
LEGACY = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
# structured_outputs keys vLLM accepts that change nothing here (there is one backend and no fallback)
_HARMLESS = {"disable_fallback", "disable_additional_properties"}
_KEYS = {f.name for f in dataclasses.fields(StructuredOutputsParams)}


def requested(body) -> tuple[StructuredOutputsParams | None, str | None]:
    """(the constraint the body asks for, the field to name if it does not compile), or (None, None).
    400 when two fields ask for one, or when one is malformed."""
    legacy = {name: getattr(body, name) for name in LEGACY if getattr(body, name, None) is not None}
    asked = [name for name, value in (("response_format", _format_asks(body.response_format)),
                                      ("structured_outputs", body.structured_outputs is not None))
             if value] + list(legacy)
    if len(asked) > 1:
        raise bad_request(f"{' and '.join(asked)} both constrain the output; send one of them.", param=asked[1])
    if _format_asks(body.response_format):  # "text" asks for nothing: structured_outputs may still
        try:
            params = StructuredOutputsParams.from_response_format(body.response_format)
        except (StructuredOutputError, ValueError, AttributeError) as err:
            raise bad_request(f"Invalid response_format: {err}", param="response_format") from None
        return params, "response_format" if params is not None else None
    if legacy:
        (name, value), = legacy.items()
        spec = {LEGACY[name]: value}
        if getattr(body, "guided_whitespace_pattern", None) is not None:
            spec["whitespace_pattern"] = body.guided_whitespace_pattern
        return _from_dict(spec, name), name
    if body.structured_outputs is not None:
        params = _from_dict(body.structured_outputs, "structured_outputs")
        return params, f"structured_outputs.{params.kind}"
    return None, None


def _format_asks(response_format) -> bool:
    return response_format is not None and response_format.get("type") != "text"


def _from_dict(spec: dict, param: str) -> StructuredOutputsParams:
    unknown = sorted(set(spec) - _KEYS - _HARMLESS)
    if unknown:
        raise bad_request(f"{param} has no field {unknown[0]!r}; it takes {', '.join(sorted(_KEYS))}.",
                          param=f"{param}.{unknown[0]}")
    try:
        return StructuredOutputsParams(**{k: v for k, v in spec.items() if k in _KEYS})
    except StructuredOutputError as err:
        raise bad_request(str(err), param=f"{param}.{err.kind}" if param == "structured_outputs" else param) \
            from None
    except (ValueError, TypeError) as err:  # none or two constraints, or a value of the wrong type
        raise bad_request(f"Invalid {param}: {err}", param=param) from None


async def compile_constraint(engine, params: StructuredOutputsParams, param: str) -> None:
    """Compile now (cached by the engine's manager, so its own compile at admission is a cache hit); a 400
    naming `param`, with the compiler's reason, for a constraint that does not compile."""
    try:  # in a worker thread: the first call also builds the manager (about 0.5 s)
        await asyncio.to_thread(lambda: engine.engine.structured_output_manager().compile(params))
    except StructuredOutputError as err:
        raise bad_request(f"{param} does not compile: {err}", param=param) from None
    except RecursionError:  # a schema sent as JSON text (guided_json, structured_outputs.json) nested too deep
        raise bad_request(f"{param} does not compile: it nests too deeply.", param=param) from None
