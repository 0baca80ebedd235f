"""The monitor's event bus: typed, frozen events that the engine, server, router and autoscaler publish.

Publishing is synchronous and cheap: with no subscriber it is one attribute read; with subscribers each
gets the event in the publisher's thread, so a subscriber must only record (append to a window, bump a
counter) and never block. A subscriber that raises is logged once and unsubscribed, so monitoring can
never break serving.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def now() -> float:
    """Event timestamps: monotonic seconds, comparable within one process."""
    return time.monotonic()


@dataclass(frozen=True, slots=True)
class Event:
    source: str = ""  # who published: "engine", "server", "router", "autoscaler", or a replica name
    t: float = field(default_factory=now)


@dataclass(frozen=True, slots=True)
class RequestFinished(Event):
    """One generation request ended, with the timings the engine measured (seconds)."""
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    output_tokens: int = 0
    queue_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: tuple[float, ...] = ()
    cached_tokens: int | None = None  # prompt tokens found in the prefix cache; None if it was never scheduled


@dataclass(frozen=True, slots=True)
class StepStats(Event):
    """One engine step: how big the batch was and what it cost."""
    batch_size: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    duration_s: float = 0.0
    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0  # fraction of KV pages in use, 0 to 1
    output_tokens: int = 0  # tokens sampled this step (one per request that got a token)


@dataclass(frozen=True, slots=True)
class QueueDepth(Event):
    running: int = 0
    waiting: int = 0
    kv_usage: float | None = None  # fraction of KV pages in use, when the publisher knows it


@dataclass(frozen=True, slots=True)
class ReplicaCount(Event):
    replicas: int = 0  # healthy replicas serving now
    desired: int = 0


@dataclass(frozen=True, slots=True)
class ScaleDecision(Event):
    current: int = 0
    desired: int = 0
    reason: str = ""


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of events to subscribers; optionally filtered by event type."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subscribers: tuple[tuple[Subscriber, tuple[type, ...]], ...] = ()

    def subscribe(self, callback: Subscriber, *kinds: type[Event]) -> Callable[[], None]:
        """Call `callback(event)` for each published event (of `kinds` if given). Returns an unsubscribe."""
        entry = (callback, tuple(kinds) or (Event,))
        with self._lock:
            self._subscribers = (*self._subscribers, entry)
        return lambda: self._remove(entry)

    def _remove(self, entry) -> None:
        with self._lock:
            self._subscribers = tuple(s for s in self._subscribers if s is not entry)

    def publish(self, event: Event) -> None:
        for entry in self._subscribers:  # a snapshot: subscribing while publishing is safe
            callback, kinds = entry
            if isinstance(event, kinds):
                try:
                    callback(event)
                except Exception:
                    log.exception("monitor subscriber %r failed; unsubscribed", callback)
                    self._remove(entry)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)
