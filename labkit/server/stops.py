"""Text out of a token stream: incremental detokenisation and stop strings.

Decoding token by token breaks multi-byte characters and the spaces some tokenizers attach to the next
token, so each step decodes a short window and emits only what became stable (vLLM's prefix/read
offsets). A stop string may straddle several deltas, so the tail that could still start one is held
back until it cannot.
"""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # decoding starts here, a little before the new tokens, for context
        self.read_offset = 0  # text up to here has been emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, new_ids: list[int], final: bool = False) -> str:
        self.ids.extend(new_ids)
        if not self.ids or (not new_ids and not final):
            return ""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd") and not final:  # an unfinished multi-byte character: wait for the rest
            return ""
        delta = full[len(prefix):] if full.startswith(prefix) else full
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta


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
