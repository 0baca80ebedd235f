"""Replicas: each one a `labkit serve` process of its own (own port, own thread count), kept at a target
count by a `ReplicaPool`.

    pool = ReplicaPool("smollm2-135m-instruct", replicas=2).start()   # returns once both are ready
    pool.urls()             # ['http://127.0.0.1:41234', 'http://127.0.0.1:41235']
    pool.scale_to(3)        # the pool's supervisor starts one more; pool.stop() ends them all

One supervisor thread reconciles the pool every 50 ms: it notices a process that exited at once (a replica
that dies is replaced within a second), starts replicas up to the target and drains the newest ones down
to it. A second thread does the HTTP: `/ready` of starting replicas, `/health` of ready ones every
`interval_s` (three misses in a row and the replica is killed and replaced), so a slow replica never delays
the first. Every process is started by the supervisor, and killed at exit if the pool was not stopped.

Draining (scale-down, `stop()`): the replica leaves the ready set at once (the router sends it nothing new),
then gets SIGTERM. Each replica runs with `--drain-timeout` = `config.drain_timeout_s`, so its own grace is
the pool's: in-flight requests finish within it, those still running then end with an error event; the
pool kills the process only `STOP_MARGIN_S` after that. Replicas run in a session of their own, so a
Ctrl-C in the terminal reaches the pool's owner, which drains in order, and not the replicas directly.
"""
from __future__ import annotations

import atexit
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from ..config import ScaleConfig
from ..monitor.events import EventBus, ReplicaCount
from ..openmp import tuned_environment
from .process import Replica, ReplicaState, default_threads

_ANNOUNCE = re.compile(rb"serving .* on (http://\S+?) \(")
HEALTH_MISSES = 3  # consecutive failed /health checks before a replica is replaced
TICK_S = 0.05
STOP_MARGIN_S = 10.0  # after a replica's drain timeout: time to end its last requests and exit, before SIGKILL


class ReplicaPool:
    """A target number of `labkit serve` processes for one model, kept healthy by a supervisor thread.

    `model`/`encoder` are what each replica serves (aliases, hub ids or paths); `serve_args` are extra
    `labkit serve` flags (for example `["--max-num-seqs", "8"]`). `name` prefixes the replicas' names and is
    the source of the `ReplicaCount` events published on `bus`. `api_key`, if given, is the key every
    replica asks for (passed as `LABKIT_API_KEY` in its environment, never on its command line; without it
    the replicas inherit this process's `LABKIT_API_KEY`, if any).
    """

    def __init__(self, model: str | None = "smollm2-135m-instruct", replicas: int = 1, *, encoder: str | None = None,
                 config: ScaleConfig | None = None, serve_args: list[str] | tuple[str, ...] = (), name: str = "replica",
                 bus: EventBus | None = None, host: str = "127.0.0.1", log_dir: str | Path | None = None,
                 api_key: str | None = None):
        if model is None and encoder is None:
            raise ValueError("ReplicaPool: give a model, an encoder, or both")
        self.config = config or ScaleConfig(min_replicas=replicas, max_replicas=max(1, replicas))
        self.model, self.encoder, self.name, self.host = model, encoder, name, host
        self.serve_args = list(serve_args)
        self.api_key = api_key
        self.bus = bus or EventBus()
        self.target = replicas
        self._replicas: list[Replica] = []
        self._ready: tuple[Replica, ...] = ()
        self._lock = threading.RLock()
        self._numbers = itertools.count()
        self._stop = threading.Event()
        self._check = threading.Event()
        self._thread: threading.Thread | None = None
        self._prober: threading.Thread | None = None
        self._owned_log_dir = log_dir is None
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix=f"labkit-{name}-"))
        self._http = httpx.Client(timeout=httpx.Timeout(1.0, connect=0.5))
        self._last_count: tuple[int, int] | None = None
        self._next_health = 0.0
        self.replaced = 0  # replicas that died or failed health checks and were replaced
        self.failed_starts = 0  # replicas in a row that died before they were ready (reset by a ready one)
        self._spawn_not_before = 0.0  # back-off after failed starts, so a broken model is not a fork loop
        self.last_failure: str | None = None
        atexit.register(self._kill_all)  # no replica outlives the interpreter that started it

    # -- the public surface ------------------------------------------------------------------------
    def start(self, wait: bool = True, timeout: float | None = None) -> ReplicaPool:
        """Start the supervisor; with `wait`, return once `target` replicas are ready (OSError if not in time)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name=f"labkit-pool-{self.name}", daemon=True)
            self._prober = threading.Thread(target=self._probe, name=f"labkit-pool-{self.name}-health", daemon=True)
            self._thread.start()
            self._prober.start()
        if wait:
            try:
                self.wait_ready(self.target, timeout or self.config.replica_start_timeout_s)
            except BaseException:  # not ready (or interrupted): leave nothing running behind
                self.stop(timeout=5.0)
                raise
        return self

    def wait_ready(self, count: int | None = None, timeout: float = 120.0) -> None:
        count = self.target if count is None else count
        deadline = time.monotonic() + timeout
        while len(self._ready) < count:
            if self.failed_starts >= 3:
                raise OSError(f"{self.name}: {self.failed_starts} replicas in a row failed to start; the last: "
                              f"{self.last_failure}")
            if time.monotonic() > deadline or self._stop.is_set():
                tails = "; ".join(f"{r.name}: {r.exit_reason or r.log_tail(2)}" for r in self.replicas())
                raise OSError(f"{self.name}: {len(self._ready)} of {count} replicas ready after {timeout:.0f} s ({tails})")
            time.sleep(0.05)

    def scale_to(self, replicas: int) -> None:
        """Set the target; the supervisor starts or drains replicas to reach it."""
        if replicas < 0:
            raise ValueError("a pool cannot have fewer than 0 replicas")
        self.target = replicas
        self._publish_count()

    def ready(self) -> tuple[Replica, ...]:
        """The replicas that take requests now (a snapshot; safe from any thread)."""
        return self._ready

    def urls(self) -> list[str]:
        return [r.url for r in self._ready]

    def replicas(self) -> list[Replica]:
        with self._lock:
            return list(self._replicas)

    def report_failure(self, replica: Replica) -> None:
        """The router saw `replica` fail a request: check it now rather than at the next interval."""
        if replica.state == ReplicaState.READY:
            replica.health_misses = max(replica.health_misses, HEALTH_MISSES - 1)
            self._next_health = 0.0

    def stop(self, timeout: float | None = None) -> None:
        """Drain every replica (SIGTERM: in-flight requests finish within the drain timeout, then end with an
        error), kill what is left after `timeout` (default: the drain timeout + `STOP_MARGIN_S`)."""
        timeout = self.config.drain_timeout_s + STOP_MARGIN_S if timeout is None else timeout
        self._stop.set()
        for thread in (self._thread, self._prober):
            if thread is not None:
                thread.join(timeout + 5)
        for replica in self.replicas():
            self._terminate(replica, grace_s=timeout)
        deadline = time.monotonic() + timeout
        for replica in self.replicas():
            try:
                replica.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
            replica.state = ReplicaState.STOPPED
        self._ready = ()
        self._http.close()
        atexit.unregister(self._kill_all)
        if self._owned_log_dir:  # the replicas' logs lived in a temp dir of our own
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def _kill_all(self) -> None:
        self._stop.set()
        for replica in self.replicas():
            if replica.process.poll() is None:
                replica.process.kill()

    def __enter__(self) -> ReplicaPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"ReplicaPool({self.name}: {len(self._ready)} ready of {self.target} wanted, model {self.model})"

    # -- the supervisor ----------------------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception as err:  # never let one bad tick end supervision
                print(f"labkit: {self.name} supervisor: {err!r}", file=sys.stderr)
            self._stop.wait(TICK_S)

    def _reconcile(self) -> None:
        now = time.monotonic()
        for replica in self.replicas():
            code = replica.process.poll()
            if code is not None and replica.state < ReplicaState.STOPPED:
                if replica.state < ReplicaState.DRAINING:
                    replica.exit_reason = f"exited with status {code}"
                    self.replaced += 1
                if replica.ready_at is None and replica.state < ReplicaState.DRAINING:
                    self.failed_starts += 1
                    self.last_failure = f"{replica.name} {replica.exit_reason}: " + replica.log_tail(2).replace("\n", " | ")
                    self._spawn_not_before = now + min(10.0, 0.25 * 2 ** self.failed_starts)
                self._retire(replica)
            elif replica.state == ReplicaState.STARTING:
                self._watch_starting(replica, now)
            elif replica.state == ReplicaState.DRAINING and replica.stop_deadline and now > replica.stop_deadline:
                replica.process.kill()
        live = [r for r in self.replicas() if r.state < ReplicaState.DRAINING]
        if now >= self._spawn_not_before:
            for _ in range(self.target - len(live)):
                self._spawn()
        extra = len(live) - self.target
        if extra > 0:  # drain the newest first (starting ones before ready ones)
            for replica in sorted(live, key=lambda r: (r.state == ReplicaState.READY, -r.started_at))[:extra]:
                self._terminate(replica, grace_s=self.config.drain_timeout_s + STOP_MARGIN_S)
        self._refresh_ready()

    def _spawn(self) -> None:
        name = f"{self.name}-{next(self._numbers)}"
        threads = self.config.threads_per_replica or default_threads(max(self.target, 1))
        # Tuned from the start (tcmalloc preloaded, see labkit/openmp.py), so the replica need not restart itself.
        env = {**tuned_environment(os.environ), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "LABKIT_REPLICA": name, "PYTHONUNBUFFERED": "1"}
        if self.api_key:
            env["LABKIT_API_KEY"] = self.api_key
        command = [sys.executable, "-m", "labkit.cli", "serve", "--model", self.model or "none",
                   "--encoder", self.encoder or "none", "--host", self.host, "--port", "0", *self.serve_args]
        if "--drain-timeout" not in self.serve_args:  # the replica's own grace is the pool's
            command += ["--drain-timeout", f"{self.config.drain_timeout_s:g}"]
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log:  # a session of its own: only the pool signals it (see the module doc)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
        with self._lock:
            self._replicas.append(Replica(name, process, log_path, threads))

    def _watch_starting(self, replica: Replica, now: float) -> None:
        if replica.url is None:  # the server prints its URL once it listens (it was started on port 0)
            try:
                found = _ANNOUNCE.search(replica.log_path.read_bytes())
            except OSError:
                found = None
            if found:
                replica.url = found.group(1).decode()
        if now - replica.started_at > self.config.replica_start_timeout_s:
            replica.exit_reason = f"not ready after {self.config.replica_start_timeout_s:.0f} s"
            self._terminate(replica, grace_s=0.0)

    def _probe(self) -> None:
        """The HTTP side, in its own thread so a slow replica never delays noticing a dead one: /ready of
        starting replicas every 0.1 s, /health of ready ones every `interval_s`."""
        while not self._stop.wait(2 * TICK_S):
            try:
                for replica in self.replicas():
                    if replica.state == ReplicaState.STARTING and replica.url and self._get_ok(replica.url + "/ready"):
                        with self._lock:
                            if replica.state == ReplicaState.STARTING:
                                replica.state, replica.ready_at = ReplicaState.READY, time.monotonic()
                                self.failed_starts = 0
                        self._refresh_ready()
                if time.monotonic() >= self._next_health:
                    self._next_health = time.monotonic() + self.config.interval_s
                    for replica in self._ready:
                        self._check_health(replica)
            except Exception as err:  # never let one bad probe end health checking
                print(f"labkit: {self.name} health checks: {err!r}", file=sys.stderr)

    def _check_health(self, replica: Replica) -> None:
        if self._get_ok(replica.url + "/health"):
            replica.health_misses = 0
            return
        replica.health_misses += 1
        if replica.health_misses >= HEALTH_MISSES and replica.state == ReplicaState.READY:
            replica.exit_reason = f"failed {HEALTH_MISSES} health checks"
            self.replaced += 1
            self._terminate(replica, grace_s=0.0)

    def _get_ok(self, url: str) -> bool:
        try:
            return self._http.get(url).status_code == 200
        except httpx.HTTPError:
            return False

    def _terminate(self, replica: Replica, grace_s: float) -> None:
        with self._lock:
            if replica.state >= ReplicaState.DRAINING:
                return
            replica.state = ReplicaState.DRAINING
            replica.stop_deadline = time.monotonic() + grace_s
        try:
            replica.process.send_signal(signal.SIGTERM if grace_s > 0 else signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._refresh_ready()

    def _retire(self, replica: Replica) -> None:
        replica.state = ReplicaState.STOPPED
        with self._lock:
            self._replicas.remove(replica)
        self._refresh_ready()

    def _refresh_ready(self) -> None:
        self._ready = tuple(r for r in self.replicas() if r.state == ReplicaState.READY)
        self._publish_count()

    def _publish_count(self) -> None:
        count = (len(self._ready), self.target)
        if count != self._last_count:
            self._last_count = count
            self.bus.publish(ReplicaCount(source=self.name, replicas=count[0], desired=count[1]))
