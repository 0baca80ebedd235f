"""Incremental detokenisation matches a full decode; stop strings cut the text even across deltas."""
from __future__ import annotations

import pytest

from labkit.server.detokenize import IncrementalDetokenizer, StopMatcher

@pytest.fixture(scope="module")
def tokenizer(default_llm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_llm_dir)


@pytest.mark.integration  # needs the default model's tokenizer files
@pytest.mark.parametrize("text", ["Hello, world! It's a fine day.", "naïve café — 東京 🚀 done", "  spaced  out\n\nlines"])
def test_token_by_token_deltas_add_up_to_the_full_decode(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.add([i]) for i in ids] + [detok.add([], final=True)]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert all("\ufffd" not in p for p in pieces)


@pytest.mark.unit
def test_stop_string_split_across_deltas_is_caught_and_never_emitted():
    stops = StopMatcher(["STOP"])
    out = []
    for piece in ["Hello S", "T", "OP and more"]:
        text, hit = stops.feed(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "Hello " and hit


@pytest.mark.unit
def test_without_a_stop_everything_comes_out_by_the_end():
    stops = StopMatcher(["###"])
    emitted = [stops.feed(p)[0] for p in ["a#", "b#", "#"]] + [stops.feed("", final=True)[0]]
    assert "".join(emitted) == "a#b##"
