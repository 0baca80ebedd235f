"""labkit's own logs (the `labkit.*` loggers) as Elastic Common Schema lines on stderr, at a chosen level.

`labkit serve` and `labkit up` call `configure_logging(log_level(args.log_level))`: the flag, else
`$LABKIT_LOG_LEVEL`, else info. A line written while a traced request runs carries its trace.id and span.id.
A program that imports labkit keeps its own logging: nothing here runs unless called.
"""
from __future__ import annotations

import logging
import os
import sys

LEVELS = ("debug", "info", "warning", "error", "critical")
ENV = "LABKIT_LOG_LEVEL"


def log_level(flag: str | None = None) -> str:
    """The level asked for: `flag`, else $LABKIT_LOG_LEVEL, else info (a ValueError names a bad one)."""
    level = (flag or os.environ.get(ENV) or "info").strip().lower()
    if level not in LEVELS:
        source = "--log-level" if flag else ENV
        raise ValueError(f"{source} is {level!r}; choose one of: {', '.join(LEVELS)}")
    return level


def configure_logging(level: str) -> None:
    """Send `labkit.*` records at `level` and above to stderr as ECS JSON lines (and only there)."""
    import ecs_logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ecs_logging.StdlibFormatter())
    handler.addFilter(_with_trace_ids)
    logger = logging.getLogger("labkit")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False


def _with_trace_ids(record: logging.LogRecord) -> bool:
    """Adds the current span's ids (a traced request's, see tracing.py) under ECS's names."""
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        record.__dict__["trace.id"] = format(ctx.trace_id, "032x")
        record.__dict__["span.id"] = format(ctx.span_id, "016x")
    return True
