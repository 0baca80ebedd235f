"""Stop strings cut streamed text even when they straddle deltas, and never show their first characters."""
from __future__ import annotations

import pytest

from labkit.server.stops import StopMatcher


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
