"""Chat messages → prompt token ids, such that nothing a user wrote can become a control token.

Rendering the chat template to text and tokenizing that text would read `<|im_start|>system` typed inside
a user's message as the real special token: the user could open a system turn of their own (role
spoofing). Here, when a message's text holds a special token's text, the template is rendered with a
placeholder for each text, the template's own parts are tokenized with their special tokens, and each
message's text is tokenized with `split_special_tokens=True` (as plain characters). Texts without any
special token's text take the ordinary path, so their token ids are exactly what the template gives.
"""
from __future__ import annotations

import re
import secrets


def chat_token_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` ({"role", "content"} dicts) under the tokenizer's chat template, followed by
    the assistant's turn (unless `add_generation_prompt` is False, which /tokenize can ask for). ValueError if
    there is no template, or if a message holds a special token's text and the template does not keep message
    texts verbatim (then it cannot be made safe)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This model's tokenizer has no chat template; pass plain text or token ids.")
    texts = [m.get("content") for m in messages]
    specials = special_token_texts(tokenizer)
    if not any(isinstance(t, str) and any(s in t for s in specials) for t in texts):
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=False)
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    nonce = secrets.token_hex(8)
    marks = {f"LABKITTEXT{i}X{nonce}": text for i, text in enumerate(texts) if isinstance(text, str)}
    stand_ins = iter(marks)
    masked = [{**m, "content": next(stand_ins)} if isinstance(m.get("content"), str) else m for m in messages]
    rendered = tokenizer.apply_chat_template(masked, add_generation_prompt=add_generation_prompt, tokenize=False)
    pieces = re.split(f"(LABKITTEXT\\d+X{nonce})", rendered)
    if sorted(p for p in pieces if p in marks) != sorted(marks):  # each text exactly once, verbatim
        found = next(s for t in texts if isinstance(t, str) for s in specials if s in t)
        raise ValueError(f"A message holds the control token {found!r}, and this model's chat template does not "
                         f"keep message texts verbatim, so it cannot be read as plain text; remove it.")
    ids: list[int] = []
    for piece in pieces:
        if piece in marks:
            ids += tokenizer(marks[piece], add_special_tokens=False, split_special_tokens=True)["input_ids"]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def special_token_texts(tokenizer) -> tuple[str, ...]:
    """The texts the tokenizer reads as special tokens (`<|im_start|>`, `<|endoftext|>`, ...)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    texts = {t.content for t in decoder.values() if getattr(t, "special", False)}
    texts |= set(getattr(tokenizer, "all_special_tokens", ()) or ())
    return tuple(sorted(t for t in texts if t))


def max_token_chars(tokenizer) -> int:
    """The most characters one token can stand for: a prompt of more than `max_model_len * max_token_chars`
    characters cannot fit the context, which is known without tokenizing it. (The vocabulary's strings:
    byte-level BPE writes one byte per character, so a token's text has at most as many characters.)"""
    return max((len(piece) for piece in tokenizer.get_vocab()), default=1)
