"""A dynamic batcher in the style of Triton's: items that arrive close together run as one batch.

The first item of a batch waits at most `max_queue_delay_ms` for others to join it; a batch never holds
more than `max_batch_size` items. One worker thread runs `fn(batch) -> results` (one result per item),
so the model is only ever called from that thread. `submit()` returns a `concurrent.futures.Future`;
`asyncio.wrap_future` turns it into an awaitable for a server. Knows nothing of HTTP.

    batcher = DynamicBatcher(lambda texts: encoder.embed(texts).tolist(), max_batch_size=32, max_queue_delay_ms=5)
    vectors = [f.result() for f in batcher.submit_many(["a", "b"])]
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any


class QueueFullError(RuntimeError):
    """The batcher's queue holds `max_queue_size` items already; try again later."""


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.items / self.batches if self.batches else 0.0


class DynamicBatcher:
    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], *, max_batch_size: int = 32,
                 max_queue_delay_ms: float = 5.0, max_queue_size: int = 4096,
                 on_batch: Callable[[int, float], None] | None = None, name: str = "dynamic-batcher"):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be 0 or more, got {max_queue_delay_ms}")
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000
        self.max_queue_size = max_queue_size
        self.on_batch = on_batch  # called as on_batch(batch_size, seconds) after each batch
        self.stats = BatcherStats()
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    @property
    def queue_size(self) -> int:
        return self._queue.qsize()

    def submit(self, item: Any) -> Future:
        return self.submit_many([item])[0]

    def submit_many(self, items: Sequence[Any]) -> list[Future]:
        """Queue every item (all or none); each future resolves to that item's result."""
        if self._closed:
            raise RuntimeError("the batcher is closed")
        if self._queue.qsize() + len(items) > self.max_queue_size:
            raise QueueFullError(f"the batcher queue is full ({self.max_queue_size} items)")
        futures = [Future() for _ in items]
        for item, future in zip(items, futures):
            self._queue.put((item, future))
        return futures

    def close(self, timeout: float | None = 5.0) -> None:
        """Finish what is queued, then stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _collect(self, first: tuple[Any, Future]) -> tuple[list[tuple[Any, Future]], bool]:
        """The first item plus whatever arrives within the delay, up to the batch size."""
        batch, stop = [first], False
        deadline = time.monotonic() + self.max_queue_delay_s
        while len(batch) < self.max_batch_size:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if entry is None:
                stop = True
                break
            batch.append(entry)
        return batch, stop

    def _call(self, live: list[tuple[Any, Future]]) -> list[Any]:
        results = list(self.fn([item for item, _ in live]))
        if len(results) != len(live):
            raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        return results

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            # A future cancelled by its caller (client gone) is skipped, not computed.
            live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.perf_counter()
            try:
                results = self._call(live)
            except Exception as err:
                if len(live) == 1:
                    live[0][1].set_exception(err)
                else:  # one bad item must not fail the others: each runs alone, and only the bad ones fail
                    for entry in live:
                        try:
                            entry[1].set_result(self._call([entry])[0])
                        except Exception as alone:
                            entry[1].set_exception(alone)
            else:
                for (_, future), result in zip(live, results):
                    future.set_result(result)
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest_batch = max(self.stats.largest_batch, len(live))
            if self.on_batch is not None:
                self.on_batch(len(live), time.perf_counter() - started)
        # Anything still queued after the stop marker fails rather than hanging its caller.
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if entry is not None and entry[1].set_running_or_notify_cancel():
                entry[1].set_exception(RuntimeError("the batcher was closed"))
