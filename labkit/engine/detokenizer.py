"""Text from a growing list of token ids, one token at a time.

Decoding each token alone breaks multi-byte characters and the leading spaces some tokenizers attach to
the next token, so each step decodes a short window before the new token and keeps only what became
stable (the prefix/read offsets of vLLM and TGI).
"""
from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = []
        self.text = ""
        self.prefix_offset = 0  # the window starts here, a little before the unread tokens, for context
        self.read_offset = 0  # tokens before here are already in self.text

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens,
                                     clean_up_tokenization_spaces=False)

    def add(self, token_id: int, final: bool = False) -> str:
        """Add one token; return the text that became stable (possibly empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if full.endswith("\ufffd") and not final:  # half a multi-byte character: wait for the rest
            return ""
        delta = full[len(prefix):] if full.startswith(prefix) else full
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += delta
        return delta

    def truncate(self, length: int) -> None:
        """Cut the text (a stop string was found at `length`)."""
        self.text = self.text[:length]
