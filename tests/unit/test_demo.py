"""The demo's pieces that need no browser: what it sends the server (no seed unless one is typed), and the
data its charts draw (typed columns, so the axes stay numeric; axis tops above every point)."""
from __future__ import annotations

import json

import pytest

from loopback import background_asgi

pytestmark = pytest.mark.unit


def chat_server(bodies: list[dict]):
    """An OpenAI-compatible stub: records each chat request's body and streams the reply "Paris"."""
    async def app(scope, receive, send):
        if scope["path"] == "/v1/chat/completions":
            bodies.append(json.loads((await receive())["body"]))
            events = [{"choices": [{"delta": {"content": "Paris"}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": {"completion_tokens": 1}}]
            body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            kind = b"text/event-stream"
        else:
            body, kind = json.dumps({"data": [{"id": "stub"}]}), b"application/json"
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]})
        await send({"type": "http.response.body", "body": body.encode()})
    return background_asgi(app)


def test_an_empty_seed_box_sends_no_seed_and_a_number_sends_it():
    from labkit.demo import ChatBackend, parse_seed

    bodies: list[dict] = []
    with chat_server(bodies) as url:
        backend = ChatBackend(url)
        question = [{"role": "user", "content": "capital of France?"}]
        for typed in ("", " 7 "):
            *_, (_, stats) = backend.stream(question, 0.0, 8, parse_seed(typed))
    assert backend.model == "stub" and stats["finish_reason"] == "stop" and stats["tokens"] == 1
    assert "seed" not in bodies[0] and bodies[1]["seed"] == 7
    assert bodies[0]["temperature"] == 0.0
    with pytest.raises(ValueError, match="seed must be a whole number or empty, not 'x'"):
        parse_seed("x")


def test_chart_frames_stay_numeric_even_when_empty():
    import gradio as gr

    from labkit.demo import reply_frame, throughput_frame

    scatter, line = gr.ScatterPlot(x="reply", y="ttft_ms"), gr.LinePlot(x="seconds", y="tokens_per_s")
    for replies in ([], [{"reply": 1, "ttft_ms": 41.5, "tokens_per_s": 30.0}]):
        assert set(scatter.postprocess(reply_frame(replies)).datatypes.values()) == {"quantitative"}
    assert set(line.postprocess(throughput_frame([], 0.0)).datatypes.values()) == {"quantitative"}
    assert throughput_frame([(100.0, 5.0), (103.0, 7.0)], 103.0)["seconds"].tolist() == [-3.0, 0.0]


@pytest.mark.parametrize(("values", "top"), [([330.4], 400), ([287.0, 95.0], 400), ([4.5], 5), ([], 1.0),
                                             ([0.0], 1.0), ([136.0], 150)])
def test_axis_tops_are_round_and_above_every_point(values, top):
    from labkit.demo import axis_top

    assert axis_top(values) == pytest.approx(top)
