"""MONITOR from the command line: `labkit monitor`, a live terminal summary of any server's /metrics. It needs
httpx and prometheus_client, never torch."""
from __future__ import annotations

import argparse
import sys
import time

from .flags import positive_float, positive_int


def cmd_monitor(args: argparse.Namespace) -> None:
    from ..monitor.console import format_snapshot
    from ..monitor.sources import RemoteSource

    source = RemoteSource(args.url, window_s=args.window)
    live = sys.stdout.isatty() and not args.count
    shown = 0
    try:
        source.read()  # the first scrape: an OSError here (one line, exit 1) if the server cannot be reached
        while True:
            time.sleep(args.interval)
            try:
                text = format_snapshot(source.read())
            except OSError as err:  # it was there a moment ago: say so and keep watching
                text = f"labkit monitor: {err} (retrying)"
            print(("\033[H\033[2J" if live else "") + text + ("" if live else "\n"), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                return
    finally:
        source.close()


def add_monitor_command(commands) -> None:
    monitor = commands.add_parser("monitor", help="a live terminal summary of a server's /metrics",
                                  description="Scrape the /metrics of a labkit server or router, or of a vLLM "
                                              "server (the header names the engine), every INTERVAL "
                                              "seconds and print latency (mean, p50, p95, p99 of end-to-end, "
                                              "TTFT, inter-token and queue time), throughput, queue, KV cache "
                                              "and memory over the last WINDOW seconds. Ctrl-C stops.")
    monitor.add_argument("--url", action="append", required=True,
                         help="the server's base URL, e.g. http://127.0.0.1:8000 (repeat for replicas: added up)")
    monitor.add_argument("--interval", type=positive_float, default=1.0, help="seconds between refreshes "
                                                                              "(default 1)")
    monitor.add_argument("--window", type=positive_float, default=30.0, help="seconds the statistics cover "
                                                                            "(default 30)")
    monitor.add_argument("--count", type=positive_int, default=None, help="stop after this many refreshes "
                                                                          "(default: until Ctrl-C)")
    monitor.set_defaults(run=cmd_monitor)
