"""A `Snapshot` as a small text table, for `labkit monitor` (terminals, logs, anything outside Jupyter)."""
from __future__ import annotations

import time

from .stats import Snapshot, Summary


def _num(value, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value * scale:,.{digits}f}{unit}"


def _ms(summary: Summary) -> list[str]:
    return [_num(summary.mean, 1000, 0), _num(summary.p50, 1000, 0), _tail(summary.p95, summary.name(0.95)),
            _tail(summary.p99, summary.name(0.99))]


def _tail(value: float | None, name: str) -> str:
    """A p95/p99 cell, marked where the window held too few values for that quantile (`Summary.name`)."""
    return _num(value, 1000, 0) + (" (max)" if value is not None and name == "max" else "")


def format_snapshot(s: Snapshot) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(s.t))
    window = f"last {s.window_s:.0f} s" if s.window_s else "collecting (rates after the second read)"
    lines = [f"labkit monitor  {s.source}  {clock}  ({window})", ""]
    rows = [("latency (ms)", "mean", "p50", "p95", "p99", "n"),
            ("end-to-end", *_ms(s.latency), str(s.latency.count)),
            ("time to first token", *_ms(s.ttft), str(s.ttft.count)),
            ("inter-token", *_ms(s.itl), str(s.itl.count)),
            ("queue", *_ms(s.queue), str(s.queue.count))]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    lines.append("")
    lines.append(f"throughput   {_num(s.tokens_per_s)} tokens/s, {_num(s.requests_per_s, digits=2)} requests/s, "
                 f"mean batch {_num(s.batch_size)}")
    lines.append(f"now          {_num(s.running, digits=0)} running, {_num(s.waiting, digits=0)} waiting, "
                 f"KV cache {_num(s.kv_usage, 100, 0, '%')} used"
                 + (f", {_num(s.replicas, digits=0)} replicas" if s.replicas is not None else ""))
    g = s.goodput
    if g.requests_per_s is not None:
        targets = ", ".join(f"{name} {seconds * 1000:g} ms" for name, seconds in g.slo.targets_s().items())
        missed = ", ".join(f"{phase} {count:.0f}" for phase, count in g.missed.items())
        lines.append(f"goodput      {_num(g.requests_per_s, digits=2)} requests/s within SLO ({targets or 'no SLO set'}), "
                     f"{_num(g.fraction, 100, 0, '%')} of {g.judged:.0f}; missed in {missed}")
    m = s.memory
    if m is not None:
        total = f" of {_num(m.total_bytes, 2**-30, 1)} GiB" if m.total_bytes and m.is_gpu else ""
        util = f", {'GPU' if m.is_gpu else 'CPU'} {_num(m.utilization_perc, 100, 0, '%')} busy"
        lines.append(f"memory       {_num(m.used_bytes, 2**-30, 2)} GiB{total} ({m.label}){util}")
    lines.append(f"in all       {s.requests_total:,} requests, {s.tokens_total:,} tokens")
    if any("(max)" in cell for row in rows for cell in row):
        lines.append("note         (max): too few values in the window for that percentile (p95 needs 20, p99 100), "
                     "so it shows the slowest request (from /metrics: estimated within that request's histogram bucket, "
                     "so two such cells can differ)")
    for note in s.notes:
        lines.append(f"note         {note}")
    return "\n".join(lines)
