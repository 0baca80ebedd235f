"""The demo's connection to a server: chat replies streamed from any OpenAI-compatible server, and its live
numbers read from /metrics through labkit.monitor (labkit's or vLLM's series, under labkit's names)."""
from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx

from .monitor import RemoteSource, Snapshot

LIVE_WINDOW_S = 3.0  # tokens/s is the counter's growth over this window: short enough to follow a reply


class ChatBackend:
    """Streams chat replies from an OpenAI-compatible server and reads its live numbers from /metrics."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0))
        self.model = model or self._first_model()
        self.monitor = RemoteSource(self.url, window_s=LIVE_WINDOW_S)

    def _first_model(self) -> str:
        cards = self.client.get(f"{self.url}/v1/models", headers=self.headers).raise_for_status().json()["data"]
        chat = [c for c in cards if c.get("kind", "causal-lm") == "causal-lm"] or cards
        return chat[0]["id"]

    def stream(self, messages: list[dict], temperature: float, max_tokens: int,
               seed: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (text piece, stats so far); stats hold ttft_ms, tokens, tokens_per_s, finish_reason. Without
        `seed` the server draws fresh randomness for every request."""
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
        if seed is not None:
            body["seed"] = seed
        started = time.perf_counter()
        stats = {"ttft_ms": None, "tokens": 0, "tokens_per_s": 0.0, "finish_reason": None}
        with self.client.stream("POST", f"{self.url}/v1/chat/completions", json=body, headers=self.headers) as r:
            if r.status_code != 200:
                r.read()
                message = r.json().get("error", {}).get("message", r.text) if r.text.startswith("{") else r.text
                raise RuntimeError(f"HTTP {r.status_code}: {message}")
            for line in r.iter_lines():
                if not line.startswith("data:") or line.strip() == "data: [DONE]":
                    continue
                payload = json.loads(line[5:])
                if "error" in payload:
                    raise RuntimeError(payload["error"].get("message", "error"))
                if payload.get("usage"):
                    stats["tokens"] = payload["usage"]["completion_tokens"]
                for choice in payload.get("choices") or []:
                    stats["finish_reason"] = choice.get("finish_reason") or stats["finish_reason"]
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        now = time.perf_counter()
                        if stats["ttft_ms"] is None:
                            stats["ttft_ms"] = (now - started) * 1000
                        stats["tokens"] += 1
                        elapsed = now - started
                        stats["tokens_per_s"] = stats["tokens"] / elapsed if elapsed > 0 else 0.0
                        yield piece, dict(stats)
        elapsed = time.perf_counter() - started
        stats["tokens_per_s"] = stats["tokens"] / elapsed if elapsed > 0 else 0.0
        yield "", stats

    def live(self) -> Snapshot | None:
        """The server's numbers now (labkit's or vLLM's /metrics, read as labkit's names), or None when its
        /metrics does not answer. Rates need two reads: the first has none."""
        try:
            return self.monitor.read()
        except OSError:
            return None
