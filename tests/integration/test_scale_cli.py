"""`labkit up`: the router and a fixed pool from the command line, stopped cleanly by SIGTERM."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
from loopback import metric

pytestmark = pytest.mark.integration


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_labkit_up_serves_through_the_router_and_stops_every_replica_on_sigterm(tiny_model_dirs):
    command = [sys.executable, "-m", "labkit.cli", "up", tiny_model_dirs["llama"], "--replicas", "2",
               "--port", "0", "--device", "cpu", "--dtype", "float32", "--policy", "round_robin"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r"routing to 2 replica\(s\) of .* on (http://\S+) \(policy round_robin", line)
        assert found, line + process.stderr.read() if process.poll() is not None else line
        url = found.group(1)
        replicas = child_pids(process.pid)
        assert len(replicas) == 2
        listed = [re.search(r"replica \S+ on (http://\S+) \(pid (\d+)", process.stdout.readline()) for _ in replicas]
        assert sorted(int(m.group(2)) for m in listed) == sorted(replicas)
        assert all(httpx.get(m.group(1) + "/health").status_code == 200 for m in listed)  # each one answers there
        seen = set()
        for _ in range(4):
            response = httpx.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3}, timeout=30)
            assert response.status_code == 200
            seen.add(response.headers["x-labkit-replica"])
        assert len(seen) == 2
        assert metric(httpx.get(url + "/metrics").text, "labkit:replicas") == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        assert "stopped" in process.stdout.read()
        for pid in replicas:
            assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(") ")[1][0] == "Z"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize("flags, message", [
    (["--replicas", "2", "--min-replicas", "1"], "either --replicas"),
    (["--min-replicas", "3", "--max-replicas", "2"], "max_replicas"),
    (["--policy", "fastest"], "unknown policy 'fastest'"),
])
def test_labkit_up_refuses_bad_flags_in_one_line(flags, message):
    done = subprocess.run([sys.executable, "-m", "labkit.cli", "up", *flags], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
