"""The dashboard in a real JupyterLab, in Debian's headless Chromium: run a notebook that serves a tiny model
and opens `Dashboard(server)`, start traffic from a background thread, and watch the plotly panels gain
points while the kernel stays free to run other cells."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.e2e
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook(model_dir: str) -> dict:
    cells = [
        "import threading, httpx, labkit\nfrom widgets import Dashboard\n"
        f"server = labkit.serve(labkit.load_model({model_dir!r}, device='cpu', dtype='float32', progress=False))\n"
        "dash = Dashboard(server, interval_s=0.5)\ndash",
        "def drive():\n    for i in range(2000):\n        if not server.running: return\n"
        "        httpx.post(server.url + '/v1/completions', json={'prompt': f'hi {i}', 'max_tokens': 8, "
        "'ignore_eos': True}, timeout=30)\n"
        "threading.Thread(target=drive, daemon=True).start()",
        "print('kernel', 'free')",
    ]
    return {"cells": [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
                      for c in cells],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def lab(tmp_path, tiny_model_dirs):
    (tmp_path / "live.ipynb").write_text(json.dumps(notebook(tiny_model_dirs["llama"])))
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--ServerApp.token={token}", f"--notebook-dir={tmp_path}", "--LabApp.news_url=''"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    with open(tmp_path / "lab.log", "w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "lab.log").read_text()
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "JupyterLab did not start"
            time.sleep(0.3)
        yield f"{url}/lab/tree/live.ipynb?token={token}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def points(page) -> list[int]:
    """Points in the first trace of each plotly figure on the page (the panels' live state)."""
    return page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                         ".map(el => (el.data && el.data[0] && el.data[0].x) ? el.data[0].x.length : 0)")


def test_dashboard_panels_update_live_in_jupyterlab(lab, tmp_path):
    if shutil.which(CHROMIUM) is None:
        pytest.fail("Debian chromium is missing: `make test` installs it (APT_TEST_PACKAGES)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(lab)
            page.locator(".jp-Notebook").wait_for(timeout=60_000)
            page.locator(".jp-StatusBar-Widget", has_text="Idle").first.wait_for(timeout=60_000)  # kernel ready
            page.screenshot(path=str(tmp_path / "opened.png"))
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            try:
                page.locator(".jp-OutputArea-output", has_text="kernel free").wait_for(timeout=120_000)
            finally:
                page.screenshot(path=str(tmp_path / "ran.png"))
            deadline = time.monotonic() + 60
            while len(points(page)) < 4 or min(points(page)) < 2:
                assert time.monotonic() < deadline, f"the panels did not appear: {points(page)}"
                time.sleep(0.25)
            first = points(page)
            time.sleep(3)
            later = points(page)
            tokens = page.evaluate("() => document.querySelectorAll('.js-plotly-plot')[1].data[0].y"
                                   ".filter(v => v !== null)")
            page.screenshot(path=str(tmp_path / "dashboard.png"))
        finally:
            browser.close()
    assert len(later) == 5 and all(b > a for a, b in zip(first, later)), (first, later)  # every panel grew (goodput too)
    assert max(tokens) > 0  # tokens/s under the background traffic
