"""`labkit demo`: a Gradio chat front-end over the OpenAI-compatible server.

Replies stream token by token, each with its time to first token and tokens/s; a live plot follows the
server's generation throughput (from its /metrics) and each reply's latency. Without `url` the demo
starts labkit's own server in the background (`labkit.serve`) and talks to it; with `url` it talks to
any OpenAI-compatible server. Binds 127.0.0.1; Gradio analytics and hub telemetry are off.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import httpx  # noqa: E402

from .monitor import engine_names, scrape  # noqa: E402

HISTORY_POINTS = 120  # samples kept in the live throughput plot


class ChatBackend:
    """Streams chat replies from an OpenAI-compatible server and reads its /metrics."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0))
        self.model = model or self._first_model()

    def _first_model(self) -> str:
        cards = self.client.get(f"{self.url}/v1/models", headers=self.headers).raise_for_status().json()["data"]
        chat = [c for c in cards if c.get("kind", "causal-lm") == "causal-lm"] or cards
        return chat[0]["id"]

    def stream(self, messages: list[dict], temperature: float, max_tokens: int) -> Iterator[tuple[str, dict]]:
        """Yield (text piece, stats so far); stats hold ttft_ms, tokens, tokens_per_s, finish_reason."""
        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens,
                "stream": True, "stream_options": {"include_usage": True}}
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

    def generated_tokens(self) -> float | None:
        """Tokens the server has generated (labkit's `generation_tokens_total`, or vLLM's), or None where its
        /metrics has no such counter."""
        try:
            samples = scrape.parse(self.client.get(f"{self.url}/metrics", timeout=2.0).text)
        except (httpx.HTTPError, ValueError):
            return None
        return scrape.value(engine_names.canonical(samples), "labkit:generation_tokens_total")


def format_stats(stats: dict) -> str:
    ttft = "n/a" if stats["ttft_ms"] is None else f"{stats['ttft_ms']:.0f} ms"
    return (f"**TTFT** {ttft} · **{stats['tokens_per_s']:.1f} tokens/s** · {stats['tokens']} tokens"
            + (f" · finished: {stats['finish_reason']}" if stats.get("finish_reason") else ""))


def build_demo(backend: ChatBackend):
    import gradio as gr
    import pandas as pd

    def respond(message, history, temperature, max_tokens, replies):
        message = (message or "").strip()
        if not message:
            yield "", history, gr.skip(), replies, gr.skip()
            return
        history = [*history, {"role": "user", "content": message}, {"role": "assistant", "content": ""}]
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history[:-1]]
        yield "", history, "*generating…*", replies, gr.skip()
        stats = None
        try:
            for piece, stats in backend.stream(conversation, float(temperature), int(max_tokens)):
                history[-1]["content"] += piece
                yield "", history, format_stats(stats), replies, gr.skip()
        except (RuntimeError, httpx.HTTPError) as err:
            history[-1]["content"] += f"\n\n[error: {err}]"
            yield "", history, f"**error** {err}", replies, gr.skip()
            return
        replies = [*replies, {"reply": len(replies) + 1, "ttft_ms": stats["ttft_ms"] or 0.0,
                              "tokens_per_s": stats["tokens_per_s"]}]
        yield "", history, format_stats(stats), replies, _reply_frame(replies)

    def _reply_frame(replies):
        rows = [{"reply": r["reply"], "ttft_ms": r["ttft_ms"], "tokens_per_s": r["tokens_per_s"]} for r in replies]
        return pd.DataFrame(rows or [], columns=["reply", "ttft_ms", "tokens_per_s"])

    def tick(samples):
        total = backend.generated_tokens()
        now = time.time()
        if total is None:
            return samples, gr.skip()
        samples = [*samples[-HISTORY_POINTS:], (now, total)]
        rows = [{"t": round(t1 - samples[0][0], 1), "tokens_per_s": (v1 - v0) / (t1 - t0)}
                for (t0, v0), (t1, v1) in zip(samples, samples[1:]) if t1 > t0]
        return samples, pd.DataFrame(rows or [{"t": 0.0, "tokens_per_s": 0.0}])

    with gr.Blocks(title="labkit demo") as demo:
        gr.Markdown(f"## labkit chat\nModel **{backend.model}** served at `{backend.url}` "
                    "(OpenAI-compatible, continuous batching). Replies stream token by token.")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="conversation", height=420, elem_id="chatbot")
                prompt = gr.Textbox(label="your message", placeholder="Ask something and press Enter",
                                    elem_id="prompt", lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                stats_box = gr.Markdown("*no reply yet*", elem_id="reply-stats")
            with gr.Column(scale=2):
                temperature = gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="temperature (0 = greedy)")
                max_tokens = gr.Slider(1, 512, value=128, step=1, label="max tokens")
                throughput = gr.LinePlot(pd.DataFrame([{"t": 0.0, "tokens_per_s": 0.0}]), x="t", y="tokens_per_s",
                                         title="server throughput (tokens/s, live)", x_title="seconds",
                                         y_title="tokens/s", height=220, elem_id="throughput-plot")
                per_reply = gr.ScatterPlot(_reply_frame([]), x="reply", y="ttft_ms", title="time to first token "
                                           "per reply (ms)", x_title="reply", y_title="ms", height=220,
                                           tooltip="all", elem_id="reply-plot")
        replies = gr.State([])
        samples = gr.State([])
        outputs = [prompt, chatbot, stats_box, replies, per_reply]
        inputs = [prompt, chatbot, temperature, max_tokens, replies]
        prompt.submit(respond, inputs, outputs)
        send.click(respond, inputs, outputs)
        clear.click(lambda: ([], "*no reply yet*"), None, [chatbot, stats_box])
        gr.Timer(1.0).tick(tick, samples, [samples, throughput], show_progress="hidden")
    return demo


def _text(content) -> str:
    """Gradio may hand message content back as a list of parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def start_demo(*, model="smollm2-135m-instruct", url: str | None = None, api_key: str | None = None,
               host: str = "127.0.0.1", port: int | None = 7860, device: str = "auto", dtype: str = "auto",
               block: bool = False):
    """Start the demo; returns (gradio Blocks, its URL, the labkit server handle or None). `port=None`
    takes the first free port from 7860. With `block=False` it runs in the background: call
    `demo.close()` and `handle.stop()` when done. `model` may also be a `LoadedModel`."""
    handle = None
    if url is None:
        from .server import serve

        handle = serve(model, port=0, device=device, dtype=dtype)
        url = handle.url
    demo = build_demo(ChatBackend(url, api_key))
    demo.queue(default_concurrency_limit=8)
    _, local_url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block,
                                  share=False, ssr_mode=False, quiet=not block, inbrowser=False)
    return demo, local_url, handle


def launch_demo(**kwargs) -> None:
    """`labkit demo`: start and block until Ctrl-C."""
    _, url, handle = start_demo(block=False, **kwargs)
    print(f"labkit: demo on {url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if handle is not None:
            handle.stop()
