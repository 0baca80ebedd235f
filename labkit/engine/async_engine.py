"""`AsyncLLM`: the engine for asyncio code (the server). Submit a request, `async for` its tokens, cancel it.

The engine steps in one background thread, so the event loop never waits on a forward pass. New requests
go through an inbox the thread drains between steps (submitting never blocks the loop). Aborts go through
a second inbox that the thread serves before its next step, so an abort waits for at most the step in
flight (taking the engine lock instead would let the stepping thread win it again and again), and the
request's KV pages are free when `abort` returns. Closing the stream early (a client that disconnects)
aborts the request without blocking the event loop: wrap it in `contextlib.aclosing` to close it at
once, else it closes when garbage-collected.

    engine = AsyncLLM(load_model("smollm2-135m-instruct"))
    async for out in engine.generate("Hello", SamplingParams(max_tokens=32)):
        print(out.new_token_ids, out.text)
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator

from ..config import EngineConfig
from ..monitor.events import RequestFinished
from .chat import max_token_chars
from .llm import LLM
from .outputs import RequestOutput
from .sampling_params import SamplingParams


class PromptTooLong(ValueError):
    """A prompt longer than the context, known from its length in characters alone."""


class AsyncLLM:
    def __init__(self, model, tokenizer=None, config: EngineConfig | None = None, *, bus=None, **overrides):
        self._llm = LLM(model, tokenizer, config, bus=bus, **overrides)
        self.bus = self._llm.bus  # the monitor's event bus (labkit.monitor)
        self.engine = self._llm.engine
        self.tokenizer = self._llm.tokenizer
        self._lock = threading.Lock()  # held while a step runs, and by abort
        self._wake = threading.Condition(threading.Lock())
        self._inbox: deque = deque()  # (request_id, ids, params, prompt) waiting to enter the engine
        self._aborts: deque = deque()  # (request_id, future) for the engine thread to serve before its next step
        self._serving_aborts = False  # the engine thread is up and will serve _aborts (guarded by _wake)
        self._streams: dict[str, tuple[asyncio.Queue, asyncio.AbstractEventLoop]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.error: BaseException | None = None  # set if the engine thread died
        # No token stands for more characters than the vocabulary's longest string: a bound on prompt text.
        self.max_prompt_chars = self.engine.max_model_len * max_token_chars(self.tokenizer)

    # ---- life cycle ----
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._serving_aborts = True
            self._thread = threading.Thread(target=self._run, name="labkit-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Abort everything in flight and stop the engine thread."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        for request_id in list(self._streams):
            self.abort(request_id)

    # ---- requests ----
    async def encode(self, prompt) -> list[int]:
        """Token ids of a prompt (text, chat messages or ids), worked out in a worker thread so the event loop
        keeps answering. A text too long for the context whatever its tokens (more characters than
        `max_model_len` tokens of this vocabulary can hold) is refused at once, without tokenizing.
        Raises ValueError (one sentence) for a prompt that cannot run."""
        if isinstance(prompt, str):
            chars = len(prompt)
        elif isinstance(prompt, list) and prompt and isinstance(prompt[0], dict):
            chars = sum(len(m.get("content") or "") for m in prompt)
        else:
            chars = 0
        if chars > self.max_prompt_chars:
            raise PromptTooLong(f"The prompt has {chars} characters, more than fit in this model's "
                                f"{self.max_model_len}-token context (at most {self.max_prompt_chars}).")
        ids = await asyncio.to_thread(self._llm.encode, prompt) if chars else self._llm.encode(prompt)
        self.engine.validate_prompt(ids)
        return ids

    async def generate(self, prompt, params: SamplingParams | None = None,
                       request_id: str | None = None) -> AsyncIterator[RequestOutput]:
        """Yield an output per step that moved the request (`.text`: the text so far, cut before a stop string;
        a tail that could begin one is held back until it cannot); the last has `finished` True and metrics.
        Raises ValueError at once for a prompt the engine cannot run."""
        ids = self._llm.encode(prompt)
        self.engine.validate_prompt(ids)
        self.start()
        request_id = request_id or f"async-{next(self._ids)}"
        if request_id in self._streams:
            raise ValueError(f"A request with id {request_id!r} is already running; ids must be unique.")
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self._streams[request_id] = (queue, loop)
        with self._wake:
            self._inbox.append((request_id, ids, params or SamplingParams(), prompt))
            self._wake.notify()
        finished = False
        try:
            while not finished:
                output = await queue.get()
                if isinstance(output, BaseException):
                    raise RuntimeError("The engine thread failed.") from output
                finished = output.finished
                yield output
        finally:
            self._streams.pop(request_id, None)
            if not finished:  # the event loop waits here without blocking; the engine frees the pages
                await self.abort_async(request_id)

    def abort(self, request_id: str) -> bool:
        """Cancel a request now; its pages are freed before this returns (it waits for at most the step in
        flight). False if it had already ended."""
        return self._request_abort(request_id).result()

    async def abort_async(self, request_id: str) -> bool:
        """`abort` for the event loop: the loop keeps running while the engine thread frees the pages."""
        # Shielded: a caller cancelled while waiting must not cancel the engine's future (the abort goes on).
        return await asyncio.shield(asyncio.wrap_future(self._request_abort(request_id)))

    def _request_abort(self, request_id: str) -> concurrent.futures.Future:
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self._wake:
            for entry in list(self._inbox):  # still in the inbox: it never reached the engine
                if entry[0] == request_id:
                    self._inbox.remove(entry)
                    if self.bus.has_subscribers:  # it never reached the engine, which therefore cannot say so
                        self.bus.publish(RequestFinished("engine", finish_reason="abort", prompt_tokens=len(entry[1])))
                    self._deliver(RequestOutput(request_id, entry[3], entry[1], [], finished=True,
                                                finish_reason="abort", text=""))
                    done.set_result(True)
                    return done
            if self._serving_aborts:
                self._aborts.append((request_id, done))
                self._wake.notify()
                return done
        with self._lock:  # no engine thread: abort here
            self._abort_now(request_id, done)
        return done

    def _abort_now(self, request_id: str, done: concurrent.futures.Future) -> None:
        """With the engine lock held. The caller's future always settles, even if the engine fails."""
        try:
            output = self.engine.abort(request_id)
        except BaseException as error:
            if not done.done():
                done.set_exception(error)
            raise
        if output is not None:
            self._deliver(output)
        if not done.done():
            done.set_result(output is not None)

    # ---- state, for /metrics and /health ----
    @property
    def num_running(self) -> int:
        return self.engine.num_running

    @property
    def num_waiting(self) -> int:
        return self.engine.num_waiting + len(self._inbox)

    @property
    def kv_usage(self) -> float:
        return self.engine.scheduler.blocks.usage

    @property
    def max_num_seqs(self) -> int:
        return self.engine.config.max_num_seqs

    @property
    def max_model_len(self) -> int:
        return self.engine.max_model_len

    def stats(self) -> dict:
        return {**self.engine.stats(), "num_waiting": self.num_waiting}

    # ---- the engine thread ----
    def _run(self) -> None:
        try:
            while True:
                with self._wake:
                    while not (self._stopping or self._inbox or self._aborts
                               or self.engine.has_unfinished_requests()):
                        self._wake.wait()
                    if self._stopping:
                        return
                    arrivals, aborts = list(self._inbox), list(self._aborts)
                    self._inbox.clear()
                    self._aborts.clear()
                with self._lock:
                    for request_id, done in aborts:
                        self._abort_now(request_id, done)
                    for request_id, ids, params, prompt in arrivals:
                        try:
                            self.engine.add_request(ids, params, request_id=request_id, prompt=prompt,
                                                    stream_text=True)
                        except Exception as error:  # refused alone: the engine thread and the others go on
                            self._deliver(RequestOutput(request_id, prompt, ids, [], finished=True,
                                                        finish_reason="error", text="",
                                                        error=f"{type(error).__name__}: {error}"))
                    outputs = self.engine.step()
                for output in outputs:
                    self._deliver(output)
        except BaseException as error:  # surface it to every waiting consumer instead of hanging them
            self.error = error
            for queue, loop in list(self._streams.values()):
                loop.call_soon_threadsafe(queue.put_nowait, error)
        finally:  # aborts asked for while the thread was leaving are served here, so no caller waits forever
            with self._wake:
                self._serving_aborts = False
                pending = list(self._aborts)
                self._aborts.clear()
            with self._lock:
                for request_id, done in pending:
                    try:
                        self._abort_now(request_id, done)
                    except BaseException:  # noqa: BLE001 (its caller gets the error through its future)
                        pass

    def _deliver(self, output: RequestOutput) -> None:
        stream = self._streams.get(output.request_id)
        if stream is not None:
            queue, loop = stream
            loop.call_soon_threadsafe(queue.put_nowait, dataclasses.replace(output))
