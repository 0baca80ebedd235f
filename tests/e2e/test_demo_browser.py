"""The Gradio demo in a real headless Chromium (Debian's, driven by Playwright): type a prompt, watch the
reply stream in, and see its TTFT and tokens/s."""
from __future__ import annotations

import shutil
import time

import pytest

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
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield context.new_page()
        finally:
            context.close()


def test_a_typed_prompt_gets_a_streamed_reply_with_its_timings(page, demo_url):
    page.goto(demo_url)
    prompt = page.locator("#prompt textarea")
    prompt.fill("Write two sentences about the sea.")
    prompt.press("Enter")
    bot = page.locator("#chatbot [data-testid='bot']").last
    lengths = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if bot.count():
            lengths.append(len(bot.inner_text()))
        if "finished:" in page.locator("#reply-stats").inner_text():  # the stats line while streaming lacks it
            break
        time.sleep(0.05)
    stats = page.locator("#reply-stats").inner_text()
    assert "TTFT" in stats and "tokens/s" in stats and "finished:" in stats, stats
    reply = bot.inner_text().strip()
    assert reply and "error" not in reply.lower()
    growing = sorted({n for n in lengths if n})
    assert len(growing) >= 2, f"the reply did not stream: lengths seen {growing}; reply {reply!r}; {stats}"
