"""Stop strings in streamed text: a stop string may straddle several deltas, so the tail that could
still start one is held back until it cannot. (The engine ends the request on the token that completes
one and cuts its final text; this keeps the streamed deltas from showing the stop's first characters.)"""
from __future__ import annotations


class StopMatcher:
    """Cuts the text at the first stop string; holds back a tail that might begin one."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.pending = ""

    def feed(self, text: str, final: bool = False) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        if final:
            out, self.pending = self.pending, ""
            return out, False
        cut = max(0, len(self.pending) - self.hold)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False
