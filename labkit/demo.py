"""`labkit demo`: a Gradio chat front-end over the OpenAI-compatible server.

Replies stream token by token, each with its time to first token and tokens/s; the server's live numbers
(tokens/s, requests running and waiting, KV-cache use) come from its /metrics through labkit.monitor. Without
`url` the demo starts labkit's own server in the background (`labkit.serve`) and talks to it; with `url` it
talks to any OpenAI-compatible server. Binds 127.0.0.1; Gradio analytics and hub telemetry are off.
"""
from __future__ import annotations

import math
import os
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import httpx  # noqa: E402

from .demo_chat import ChatBackend  # noqa: E402
from .extras import needs  # noqa: E402
from .monitor import Snapshot  # noqa: E402

HISTORY_S = 120  # seconds of server throughput the live plot keeps
REPLY_AXIS_MIN = 10  # the TTFT chart's x axis spans at least this many replies, so its ticks are whole numbers
PLACEHOLDER = "Ask something and press Enter"
WAIT_PLACEHOLDER = "wait for the reply to finish…"


def format_stats(stats: dict) -> str:
    ttft = "n/a" if stats["ttft_ms"] is None else f"{stats['ttft_ms']:.0f} ms"
    return (f"**TTFT** {ttft} · **{stats['tokens_per_s']:.1f} tokens/s** · {stats['tokens']} tokens"
            + (f" · finished: {stats['finish_reason']}" if stats.get("finish_reason") else ""))


def format_live(snap: Snapshot | None) -> str:
    if snap is None:
        return "**server** /metrics does not answer"
    rate = "measuring…" if snap.tokens_per_s is None else f"**{snap.tokens_per_s:,.1f} tokens/s**"
    parts = [f"**server** {rate}"]
    if snap.running is not None:
        parts.append(f"{snap.running:.0f} running, {snap.waiting or 0:.0f} waiting")
    parts.append("KV cache not exported" if snap.kv_usage is None else f"**KV cache {snap.kv_usage:.1%} used**")
    return " · ".join(parts)


def reply_frame(replies: list[dict]):
    """Replies as the TTFT chart's data; typed columns even when empty (an untyped empty frame would make
    the plot's axes categorical for good)."""
    import pandas as pd

    return pd.DataFrame({"reply": pd.Series([r["reply"] for r in replies], dtype="int64"),
                         "ttft_ms": pd.Series([r["ttft_ms"] for r in replies], dtype="float64"),
                         "tokens_per_s": pd.Series([r["tokens_per_s"] for r in replies], dtype="float64")})


def axis_top(values) -> float:
    """A round number above the largest value, with some headroom: the plots start from zero, and Vega
    would otherwise end the axis exactly at the top point."""
    top = max(values, default=0.0) * 1.1
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return next(step * power for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10) if step * power >= top)


def throughput_frame(samples: list[tuple[float, float]], now: float):
    import pandas as pd

    return pd.DataFrame({"seconds": pd.Series([t - now for t, _ in samples], dtype="float64"),
                         "tokens_per_s": pd.Series([v for _, v in samples], dtype="float64")})


def build_demo(backend: ChatBackend):
    import gradio as gr

    def accept(message, history):
        # Instant (no queue): the message joins the conversation and the input locks until its reply has
        # ended, so nothing can be typed into a box the stream would otherwise clear.
        message = (message or "").strip()
        if not message:
            return gr.skip(), gr.skip(), None, gr.skip(), gr.skip()
        locked = gr.Button(interactive=False)
        return (gr.Textbox(value="", interactive=False, placeholder=WAIT_PLACEHOLDER),
                [*history, {"role": "user", "content": message}], message, locked, locked)

    def respond(pending, history, temperature, max_tokens, seed, replies):
        if pending is None:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        history = [*history, {"role": "assistant", "content": ""}]
        conversation = [{"role": m["role"], "content": _text(m["content"])} for m in history[:-1]]
        yield history, "*generating…*", replies, gr.skip()
        stats = None
        try:
            for piece, stats in backend.stream(conversation, float(temperature), int(max_tokens), parse_seed(seed)):
                history[-1]["content"] += piece
                yield history, format_stats(stats), replies, gr.skip()
        except (ValueError, RuntimeError, httpx.HTTPError) as err:
            history[-1]["content"] += f"\n\n[error: {err}]"
            yield history, f"**error** {err}", replies, gr.skip()
            return
        replies = [*replies, {"reply": len(replies) + 1, "ttft_ms": stats["ttft_ms"] or 0.0,
                              "tokens_per_s": stats["tokens_per_s"]}]
        yield history, format_stats(stats), replies, ttft_chart(replies)

    def unlock():
        return (gr.Textbox(interactive=True, placeholder=PLACEHOLDER), gr.Button(interactive=True),
                gr.Button(interactive=True))

    def ttft_chart(replies):
        return gr.ScatterPlot(reply_frame(replies), x_lim=[0, max(REPLY_AXIS_MIN, len(replies) + 1)],
                              y_lim=[0, axis_top(r["ttft_ms"] for r in replies)])

    def tick(samples):
        snap, now = backend.live(), time.time()
        samples = [(t, v) for t, v in samples if t > now - HISTORY_S]
        if snap is not None and snap.tokens_per_s is not None:
            samples.append((now, snap.tokens_per_s))
        chart = gr.LinePlot(throughput_frame(samples, now), y_lim=[0, axis_top(v for _, v in samples)])
        return samples, chart, format_live(snap)

    with gr.Blocks(title="labkit demo") as demo:
        gr.Markdown(f"## labkit chat\nModel **{backend.model}** served at `{backend.url}` "
                    "(OpenAI-compatible, continuous batching). Replies stream token by token.")
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="conversation", height=420, elem_id="chatbot")
                prompt = gr.Textbox(label="your message", placeholder=PLACEHOLDER, elem_id="prompt", lines=1)
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="send")
                    clear = gr.Button("Clear", elem_id="clear")
                stats_box = gr.Markdown("*no reply yet*", elem_id="reply-stats")
            with gr.Column(scale=2):
                live_box = gr.Markdown(format_live(None), elem_id="live-stats")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="temperature", elem_id="temperature",
                                        info="0 is greedy: always the most likely token, the same reply every "
                                             "time. Higher values sample: more varied, and a small model "
                                             "soon strays from the facts.")
                seed = gr.Textbox("", label="seed", elem_id="seed", placeholder="empty: unseeded",
                                  info="Empty: fresh randomness on every reply. A whole number makes a "
                                       "sampled reply reproducible.")
                max_tokens = gr.Slider(1, 512, value=128, step=1, label="max tokens")
                throughput = gr.LinePlot(throughput_frame([], 0.0), x="seconds", y="tokens_per_s",
                                         title="server throughput (live)", x_title="seconds (0 = now)",
                                         y_title="tokens/s", x_lim=[-HISTORY_S, 0], y_lim=[0, None], height=220,
                                         elem_id="throughput-plot")
                per_reply = gr.ScatterPlot(reply_frame([]), x="reply", y="ttft_ms",
                                           title="time to first token per reply", x_title="reply",
                                           y_title="TTFT (ms)", x_lim=[0, REPLY_AXIS_MIN], y_lim=[0, None],
                                           x_axis_format="d", height=220, tooltip="all", elem_id="reply-plot")
        replies, samples, pending = gr.State([]), gr.State([]), gr.State(None)
        for trigger in (prompt.submit, send.click):
            (trigger(accept, [prompt, chatbot], [prompt, chatbot, pending, send, clear], queue=False)
             .then(respond, [pending, chatbot, temperature, max_tokens, seed, replies],
                   [chatbot, stats_box, replies, per_reply])
             .then(unlock, None, [prompt, send, clear], queue=False))
        clear.click(lambda: ([], "*no reply yet*"), None, [chatbot, stats_box])
        gr.Timer(1.0).tick(tick, samples, [samples, throughput, live_box], show_progress="hidden")
    return demo


def parse_seed(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"seed must be a whole number or empty, not {text!r}") from None


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
    with needs("labkit demo"):  # before any model loads: name the extra at once if it is missing
        import gradio  # noqa: F401
        import pandas  # noqa: F401
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
