"""The Gradio demo in a real headless Chromium (Debian's, driven by Playwright): type a prompt, watch the
reply stream in with its TTFT and tokens/s, send a second message while the first streams, and read the
TTFT chart's axes."""
from __future__ import annotations

import re
import shutil
import time

import pytest

from loopback import wait_for

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def demo_url(default_llm_fp32):
    from labkit.demo import start_demo

    demo, url, handle = start_demo(model=default_llm_fp32, port=None)
    yield url
    demo.close()
    handle.stop()


@pytest.fixture
def page(tmp_path):
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian chromium is missing: `make test` installs it (APT_TEST_PACKAGES)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context.new_page()
        finally:
            context.close()


STREAM_STATE = """() => {
    const bots = document.querySelectorAll("#chatbot [data-testid='bot']");
    return {stats: document.querySelector("#reply-stats").innerText,
            reply: bots.length ? bots[bots.length - 1].innerText : "",
            disabled: document.querySelector("#prompt textarea").disabled};
}"""


def axis_labels(page, plot: str, axis: str) -> tuple[str, list[str]]:
    """Vega's own description of an axis ("X-axis titled 'reply' for a linear scale with values from 0 to
    10") and its tick labels, from the SVG the plot renders."""
    group = page.locator(f"#{plot} svg g[aria-label^='{axis}-axis']").first
    return group.get_attribute("aria-label"), group.locator("g.role-axis-label text").all_text_contents()


def test_a_reply_streams_and_a_message_sent_meanwhile_is_answered_after_it(page, demo_url, tmp_path):
    page.goto(demo_url)
    assert page.locator("#temperature input[type='range']").input_value() == "0"  # greedy by default
    assert page.locator("#seed textarea").input_value() == ""  # unseeded: fresh randomness per reply
    prompt = page.locator("#prompt textarea")
    bots = page.locator("#chatbot [data-testid='bot']")
    prompt.fill("What is the capital of France?")
    prompt.press("Enter")
    lengths, editable_while_streaming = [], set()
    while True:
        # One DOM snapshot: read piece by piece, the reply could finish and the box unlock between reads.
        state = page.evaluate(STREAM_STATE)
        if "finished:" in state["stats"]:  # the stats line while streaming lacks it
            break
        if state["reply"]:
            lengths.append(len(state["reply"]))
            editable_while_streaming.add(not state["disabled"])
        time.sleep(0.05)
        assert len(lengths) < 2400, "the first reply never finished"
    assert editable_while_streaming == {False}, "the message box must refuse input while a reply streams"
    # Sent the moment the box takes input again (Playwright's fill waits for that), i.e. while the first
    # reply's stream is still closing.
    prompt.fill("And of Italy?")
    prompt.press("Enter")
    assert wait_for(lambda: bots.count() == 2 and prompt.is_editable() and "finished:" in
                    page.locator("#reply-stats").inner_text(), 120), "the second reply never finished"
    users = page.locator("#chatbot [data-testid='user']").all_inner_texts()
    replies = [text.strip() for text in bots.all_inner_texts()]
    assert [u.strip() for u in users] == ["What is the capital of France?", "And of Italy?"]
    assert all(replies) and not any("error" in r.lower() for r in replies), replies
    assert "Paris" in replies[0], replies  # greedy: a 135M model knows this one at temperature 0
    assert len(sorted(set(lengths))) >= 2, f"the reply did not stream: lengths seen {lengths}"
    stats = page.locator("#reply-stats").inner_text()
    assert "TTFT" in stats and "tokens/s" in stats, stats

    points = page.locator("#reply-plot svg [aria-label^='reply: ']")  # "reply: 1; TTFT (ms): 330.4; ..."
    assert wait_for(lambda: points.count() == 2, 10), "the TTFT chart does not show both replies"
    page.locator("#reply-plot").screenshot(path=str(tmp_path / "ttft-chart.png"))
    ttfts = [float(re.search(r"TTFT \(ms\): ([0-9.]+)", p.get_attribute("aria-label"))[1]) for p in points.all()]
    x_axis, x_labels = axis_labels(page, "reply-plot", "X")
    y_axis, y_labels = axis_labels(page, "reply-plot", "Y")
    assert "linear scale with values from 0 to 10" in x_axis, x_axis
    y_top = float(re.search(r"linear scale with values from 0 to ([0-9,.]+)$", y_axis)[1].replace(",", ""))
    assert max(ttfts) < y_top < 3 * max(ttfts), (ttfts, y_axis)  # every point inside, none squashed
    ticks = [float(label.replace(",", "")) for label in y_labels]  # whole labels: nothing clipped to "…004"
    assert ticks[0] == 0 and ticks == sorted(ticks) and len(ticks) >= 3, y_labels
    assert [int(label) for label in x_labels] == list(range(0, 11, int(x_labels[1]))), x_labels

    assert wait_for(lambda: "tokens/s" in page.locator("#live-stats").inner_text(), 10), "no live tokens/s"
    live = page.locator("#live-stats").inner_text()
    assert re.search(r"KV cache [0-9.]+% used", live) and "running" in live, live
