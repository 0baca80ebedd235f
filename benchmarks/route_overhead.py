"""Router overhead: the same small requests straight to a replica and through the router, interleaved.

    .venv/bin/python benchmarks/route_overhead.py                       # tiny random Llama, 400 pairs
    .venv/bin/python benchmarks/route_overhead.py --model smollm2-135m-instruct --requests 200

Two upstreams, each in its own process, with the router in a third (so client, router and replica do not
share a GIL): (1) a stub that answers at once (the router's own cost, isolated), (2) a real `labkit serve`
replica answering a 1-token completion. Requests alternate direct / routed on one keep-alive client;
overhead is the difference of the percentiles. Prints `uptime` too: the CPU may be shared.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def stub(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body = b'{"id":"x","object":"text_completion","choices":[{"index":0,"text":"ok","finish_reason":"length"}]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def run_stub(port: int) -> None:
    import uvicorn
    uvicorn.run(stub, host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False)


def run_router(urls: list[str], port: int) -> None:
    import uvicorn

    from labkit.config import RouterConfig
    from labkit.route import Router, StaticPool
    from labkit.route.handle import uvicorn_server
    uvicorn_server(Router(StaticPool(urls), RouterConfig(port=port)), RouterConfig(port=port)).run()
    del uvicorn


def wait_up(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code in (200, 404):
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise OSError(f"{url} did not come up")


def pct(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(direct: str, routed: str, body: dict, n: int) -> dict:
    times = {"direct": [], "routed": []}
    with httpx.Client(timeout=60) as client:
        for _ in range(20):  # warm both paths (connections, caches)
            client.post(direct + "/v1/completions", json=body)
            client.post(routed + "/v1/completions", json=body)
        for i in range(n):
            for name, url in (("direct", direct), ("routed", routed)) if i % 2 else (("routed", routed), ("direct", direct)):
                t = time.perf_counter()
                response = client.post(url + "/v1/completions", json=body)
                times[name].append(time.perf_counter() - t)
                assert response.status_code == 200, response.text
    out = {f"{k}_{p}_ms": round(1000 * pct(v, q), 3) for k, v in times.items() for p, q in (("p50", 0.5), ("p99", 0.99))}
    out["overhead_p50_ms"] = round(out["routed_p50_ms"] - out["direct_p50_ms"], 3)
    out["overhead_p99_ms"] = round(out["routed_p99_ms"] - out["direct_p99_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="replica model (default: a tiny random Llama built in a temp dir)")
    parser.add_argument("--requests", type=int, default=400, help="pairs per upstream (default 400)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    from labkit.scale import ReplicaPool

    model = args.model
    if model is None:
        import tempfile
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from factories import build_tiny_model

        from labkit.models import ALIASES, DEFAULT_LLM, resolve_alias
        model = str(build_tiny_model("llama", Path(tempfile.mkdtemp()) / "llama", str(resolve_alias(ALIASES[DEFAULT_LLM]))))
    stub_port, router_port, router2_port = free_port(), free_port(), free_port()
    procs = [ctx.Process(target=run_stub, args=(stub_port,), daemon=True)]
    procs[0].start()
    pool = ReplicaPool(model, 1, serve_args=["--device", "cpu"]).start()
    stub_url, replica_url = f"http://127.0.0.1:{stub_port}", pool.urls()[0]
    for upstream, port in ((stub_url, router_port), (replica_url, router2_port)):
        procs.append(ctx.Process(target=run_router, args=([upstream], port), daemon=True))
        procs[-1].start()
    try:
        for url in (stub_url, f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{router2_port}"):
            wait_up(url)
        result = {"uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                  "pairs": args.requests,
                  "stub": measure(stub_url, f"http://127.0.0.1:{router_port}", {"prompt": "x"}, args.requests),
                  "replica": measure(replica_url, f"http://127.0.0.1:{router2_port}",
                                     {"prompt": "Hello", "max_tokens": 1, "temperature": 0}, args.requests),
                  "replica_model": model}
        result["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    finally:
        for proc in procs:
            proc.terminate()
            proc.join(5)
        pool.stop()
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=2)


if __name__ == "__main__":
    main()
