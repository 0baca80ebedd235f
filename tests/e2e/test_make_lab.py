"""`make lab` brings JupyterLab up on loopback, serving the notebooks folder."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_make_lab_serves_the_notebooks_on_loopback(tmp_path):
    port = _free_port()
    log = tmp_path / "lab.log"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    with open(log, "w") as out:
        lab = subprocess.Popen(["make", "-s", "lab", f"LAB_PORT={port}"], cwd=ROOT, env=env, stdout=out,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = _wait_for_url(log, port, lab)
        token = re.search(r"token=([0-9a-f]+)", url).group(1)
        contents = httpx.get(f"http://127.0.0.1:{port}/api/contents", params={"token": token}, timeout=10).json()
        names = {item["name"] for item in contents["content"]}
        assert "01_load.ipynb" in names
        assert httpx.get(f"http://127.0.0.1:{port}/api/contents", timeout=10).status_code == 403  # token required
        with pytest.raises(httpx.ConnectError):  # bound to loopback only
            httpx.get(f"http://{_non_loopback_address()}:{port}/api", timeout=2)
    finally:
        os.killpg(lab.pid, signal.SIGTERM)
        lab.wait(timeout=30)


def _wait_for_url(log: Path, port: int, process: subprocess.Popen, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]+", log.read_text())
        if match:
            return match.group(0)
        assert process.poll() is None, log.read_text()
        time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not print its URL in {timeout} s:\n{log.read_text()}")


def _non_loopback_address() -> str:
    """An IPv4 address of this machine's own interfaces that is not loopback."""
    import psutil

    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    pytest.skip("this machine has no non-loopback address to check the bind against")
