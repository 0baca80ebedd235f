"""Beyond one machine: labkit's replica app on Ray Serve, scaled by Ray's autoscaler from labkit's
ScaleConfig (the mapping is in labkit/scale/ray_backend.py). `make test` runs a shorter version
(tests/integration/test_scale_ray.py).

Set-up, in an environment that has labkit (ray is the optional `ray` extra):

    pip install -e ".[ray]"
    HF_HUB_OFFLINE=1 python benchmarks/ray_serve.py --model smollm2-135m-instruct \
        --min-replicas 1 --max-replicas 2 --target-ongoing-requests 2 --load-s 30 --rate 3

It starts a local Ray instance (loopback, dashboard off), deploys the model with `labkit.scale.ray_backend
.up_on_ray` (the same as `labkit up --backend ray`), checks a chat reply, a stream and /v1/models, then
runs labkit's load generator for `--load-s` seconds while printing how many replicas Ray Serve runs, and
shuts Ray down. Measured results are in benchmarks/RESULTS.md ("Route and scale").
"""
from __future__ import annotations

import argparse
import json
import time

import httpx

from labkit.config import RouterConfig, ScaleConfig
from labkit.scale import LoadPattern, start_load
from labkit.scale.ray_backend import ray_deployment_options, up_on_ray


def check(url: str) -> None:
    started = time.monotonic()
    reply = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16,
        "temperature": 0}).json()
    print("chat:", repr(reply["choices"][0]["message"]["content"]), f"({time.monotonic() - started:.2f} s)")
    with httpx.stream("POST", url + "/v1/completions", timeout=120, json={
            "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "stream": True}) as response:
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    print(f"stream: {len(events)} events, last {events[-1]!r}")
    print("models:", [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]])


def follow_load(lab, seconds: float, rate: float, scale: ScaleConfig) -> None:
    body = {"prompt": "Once upon a time", "max_tokens": 64, "ignore_eos": True}
    run = start_load(lab.url, LoadPattern("constant", rate=rate, duration_s=seconds),
                     request=lambda i, rng: ("/v1/completions", body), timeout_s=300)
    seen, t0 = [], time.monotonic()
    while not run.done or (seen[-1][1] > scale.min_replicas and time.monotonic() - t0 < seconds + 60):
        seen.append((time.monotonic() - t0, lab.replicas()))
        if len(seen) == 1 or seen[-1][1] != seen[-2][1]:
            print(f"  t={seen[-1][0]:5.1f} s  Ray Serve replicas running: {seen[-1][1]}", flush=True)
        time.sleep(1)
    print(f"  load ended at {seconds:.0f} s; replicas running at the end: {seen[-1][1]}")
    print("load:", run.wait().summary())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--min-replicas", type=int, default=1)
    parser.add_argument("--max-replicas", type=int, default=2)
    parser.add_argument("--target-ongoing-requests", type=float, default=ScaleConfig.target_ongoing_requests)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default=None, help="a Ray cluster to join ('auto'); default: start one locally")
    parser.add_argument("--load-s", type=float, default=0, help="seconds of load after the checks (default 0)")
    parser.add_argument("--rate", type=float, default=4.0, help="requests/s for --load-s (default 4)")
    args = parser.parse_args()
    scale = ScaleConfig(min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                        target_ongoing_requests=args.target_ongoing_requests)
    router = RouterConfig(port=args.port)
    print("labkit ScaleConfig -> Ray Serve options:", json.dumps(ray_deployment_options(scale, router), indent=2))
    started = time.monotonic()
    with up_on_ray(args.model, scale=scale, router=router, device=args.device, dtype=args.dtype,
                   address=args.address) as lab:
        print(f"deployed and ready in {time.monotonic() - started:.1f} s at {lab.url}")
        check(lab.url)
        if args.load_s:
            follow_load(lab, args.load_s, args.rate, scale)


if __name__ == "__main__":
    main()
