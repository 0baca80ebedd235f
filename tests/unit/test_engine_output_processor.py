"""The output processor: incremental text equals a whole decode, stop strings cut the text even when they
straddle tokens and never show their first characters, and without a stop everything comes out by the end."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from labkit.engine.output_processor import RequestText, TextStream

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def tokenizer(default_llm_dir):
    return AutoTokenizer.from_pretrained(default_llm_dir)


class _SlowTokenizer:
    """The same tokenizer without its Rust backend: the windowed decode path."""

    def __init__(self, fast):
        self.decode = fast.decode


@pytest.mark.parametrize("fast", [True, False])
def test_streamed_text_equals_the_whole_decode(tokenizer, fast):
    text = "Hello wörld 👋 — naïve café, <|im_end|> done. 漢字も"
    ids = tokenizer(text)["input_ids"]
    stream = TextStream(tokenizer if fast else _SlowTokenizer(tokenizer), skip_special_tokens=True)
    pieces = [stream.add(i) for i in ids]
    assert "".join(pieces) + stream.flush() == tokenizer.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # half a character is never shown


def test_a_stop_string_split_across_tokens_is_caught_and_never_shown(tokenizer):
    ids = tokenizer("Hello there STOP and more")["input_ids"]
    text = RequestText(tokenizer, ("STOP",), skip_special_tokens=True)
    shown = []
    for token in ids:
        hit = text.add(token)
        shown.append(text.text)
        if hit:
            break
    assert hit == "STOP" and text.finish(stopped_by_string=True) == "Hello there "
    assert all("S" not in s for s in shown)  # the stop's first letter was held back, never streamed


def test_without_a_stop_everything_comes_out_by_the_end(tokenizer):
    ids = tokenizer("a# b# #")["input_ids"]
    text = RequestText(tokenizer, ("###",), skip_special_tokens=True)
    assert all(text.add(t) is None for t in ids)
    assert text.finish(stopped_by_string=False) == "a# b# #"
