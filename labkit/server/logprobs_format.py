"""The engine's log-probabilities (per position, {token id: Logprob}) in OpenAI's two shapes.

Chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}, ...]}]}`,
the `top` likeliest in rank order. Completions (the legacy shape lm-eval-harness reads): `{"tokens",
"token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}`, where each position's dict holds the
chosen token and the likeliest ones (vLLM's), and with echo the prompt's positions come first (the very first
has no log-probability: null).
"""
from __future__ import annotations


def _text(logprob, token_id: int, decode) -> str:
    return logprob.decoded_token if logprob is not None and logprob.decoded_token is not None else decode(token_id)


def _top(entry: dict, top: int, decode) -> list[tuple[str, float]]:
    ranked = sorted(entry.items(), key=lambda item: item[1].rank)[:top]
    return [(_text(lp, token, decode), lp.logprob) for token, lp in ranked]


def chat_logprobs(entries: list[dict], top: int, decode) -> dict:
    content = []
    for entry in entries:
        token, chosen = next(iter(entry.items()))
        text = _text(chosen, token, decode)
        content.append({"token": text, "logprob": chosen.logprob, "bytes": list(text.encode()),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                         for t, lp in _top(entry, top, decode)]})
    return {"content": content}


def completion_logprobs(entries: list, token_ids: list[int], top: int, decode, offset: int = 0) -> dict:
    """`entries[i]` belongs to `token_ids[i]` (None for a prompt's first token)."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token, entry in zip(token_ids, entries):
        chosen = entry.get(token) if entry is not None else None
        text = _text(chosen, token, decode)
        tokens.append(text)
        token_logprobs.append(chosen.logprob if chosen is not None else None)
        if entry is None:
            tops.append(None)
        else:
            candidates = dict(_top(entry, top, decode))
            candidates.setdefault(text, chosen.logprob)
            tops.append(candidates)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def merge_completion_logprobs(first: dict, second: dict) -> dict:
    return {key: first[key] + second[key] for key in first}
