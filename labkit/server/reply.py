"""The answer to a completions or chat request, as OpenAI shapes it: one choice per engine request, with its
text (after the prompt's, with echo), finish reason and log-probabilities; whole (`full`) or as stream chunks
(`stream_chunks`, fed by choices.ChoiceSet.events)."""
from __future__ import annotations

import time

from .logprobs_format import chat_logprobs, completion_logprobs, merge_completion_logprobs
from .streaming import ChunkFormat
from .tools import ToolCallParser, parse_tool_calls


class Reply:
    def __init__(self, chat: bool, body, tokenizer, prompts: list, encoded: list[list[int]], model: str,
                 response_id: str, tools=None):
        self.chat = chat
        self.body = body
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.encoded = encoded
        self.model = model
        self.id = response_id
        self.created = int(time.time())
        self.format = ChunkFormat(chat, response_id, model, self.created)
        self.echo = bool(getattr(body, "echo", False))
        self.wants_logprobs = bool(body.logprobs) if chat else body.logprobs is not None
        self.top = (body.top_logprobs or 0) if chat else (body.logprobs or 0)
        self._sent: dict[int, int] = {}  # choice index -> output log-probabilities streamed so far
        self.tools = tools  # a ToolPlan: each choice's text is read for tool calls (tools.py)
        self._parsers: dict[int, ToolCallParser] = {}  # choice index -> its streamed text's parser

    def message(self, text: str, finish_reason: str | None) -> tuple[dict, str | None]:
        """A chat choice's message and finish reason: `tool_calls` (content null if nothing else was said)
        when its text held calls."""
        if self.tools is None:
            return {"role": "assistant", "content": text}, finish_reason
        content, calls = parse_tool_calls(text, self.tools)
        if not calls:
            return {"role": "assistant", "content": content}, finish_reason
        return {"role": "assistant", "content": content, "tool_calls": calls}, "tool_calls"

    def decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def prompt_text(self, prompt_index: int) -> str:
        prompt = self.prompts[prompt_index]
        return prompt if isinstance(prompt, str) else self.tokenizer.decode(self.encoded[prompt_index])

    def _logprobs(self, choice, entries: list, with_prompt: bool) -> dict | None:
        if not self.wants_logprobs:
            return None
        if self.chat:
            return chat_logprobs(entries, self.top, self.decode)
        out = completion_logprobs(entries, [next(iter(e)) for e in entries], self.top, self.decode)
        if with_prompt:
            prompt_entries = choice.job.prompt_logprobs or [None] * len(choice.prompt_ids)
            before = completion_logprobs(prompt_entries, choice.prompt_ids, self.top, self.decode)
            shift = sum(len(t) for t in before["tokens"])
            out["text_offset"] = [offset + shift for offset in out["text_offset"]]
            out = merge_completion_logprobs(before, out)
        return out

    def full(self, choices) -> dict:
        body = []
        for choice in choices.choices:
            entries = choice.job.logprobs or []
            logprobs = self._logprobs(choice, entries, with_prompt=self.echo)
            if self.chat:
                message, reason = self.message(choice.text, choice.job.finish_reason)
                body.append({"index": choice.index, "message": message, "logprobs": logprobs,
                             "finish_reason": reason})
            else:
                text = (self.prompt_text(choice.prompt_index) if self.echo else "") + choice.text
                body.append({"index": choice.index, "text": text, "logprobs": logprobs,
                             "finish_reason": choice.job.finish_reason})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": body, "usage": choices.usage()}

    def stream_chunks(self, choice, delta: str | None) -> list[bytes]:
        """The chunks for one event of one choice: its text delta (None: it finished)."""
        chunks = []
        if self.echo and choice.index not in self._sent:  # the prompt first, as vLLM streams an echo
            chunks.append(self.format.delta(self.prompt_text(choice.prompt_index), choice.index,
                                            self._logprobs(choice, [], with_prompt=True)))
        sent = self._sent.setdefault(choice.index, 0)
        entries = (choice.job.logprobs or [])[sent:] if self.wants_logprobs else []
        self._sent[choice.index] = sent + len(entries)
        if self.tools is not None:
            return chunks + self._tool_chunks(choice, delta, entries)
        if delta or entries:
            chunks.append(self.format.delta(delta or "", choice.index, self._logprobs(choice, entries, False)))
        if delta is None:
            chunks.append(self.format.finish(choice.job.finish_reason, choice.index))
        return chunks

    def _tool_chunks(self, choice, delta: str | None, entries: list) -> list[bytes]:
        """Text as content deltas, held back where it may begin a tool call; each call as it completes."""
        parser = self._parsers.setdefault(choice.index, ToolCallParser(self.tools))
        events = parser.feed(delta) if delta is not None else parser.finish()
        chunks, logprobs = [], self._logprobs(choice, entries, False)
        for kind, value in events:
            if kind == "content":
                chunks.append(self.format.delta(value, choice.index, logprobs))
                logprobs = None
            else:
                chunks += self.format.tool_call(value, parser.calls.index(value), choice.index)
        if logprobs is not None and entries:  # tokens held back: their log-probabilities go now
            chunks.append(self.format.delta("", choice.index, logprobs))
        if delta is None:
            reason = "tool_calls" if parser.calls else choice.job.finish_reason
            chunks.append(self.format.finish(reason, choice.index))
        return chunks
