"""How many CPU threads the engine's forward passes use, chosen between steps from whether they get the CPU.

On a CPU torch splits every op over OpenMP threads. Threads that spin for a moment between ops (labkit sets
a bounded `GOMP_SPINCOUNT`, labkit/openmp.py) make the engine about 1.9x faster than threads that sleep at
once, as long as the cores are ours. When another busy process shares them, a thread waits at the end of
each op for a partner that was descheduled, and steps slow down several fold (measured on 2 cores: two
engines side by side made 49 tokens/s each with 2 threads, 320 each with the governor's one). So the
governor watches how long this process's threads waited for a CPU (`run_delay` in
/proc/self/task/*/schedstat, a kernel count, not a guess from timings), halves its threads (down to one)
when they waited for a large share of the time, and tries the full count again after a back-off that doubles
while the CPU stays shared.
"""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass

import torch

SCHEDSTAT = "/proc/self/task/*/schedstat"
log = logging.getLogger("labkit.engine")


def cpu_wait_seconds() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a CPU; None where unknown."""
    total, seen = 0, False
    for path in glob.glob(SCHEDSTAT):
        try:
            with open(path) as stat:
                total += int(stat.read().split()[1])
            seen = True
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9 if seen else None


@dataclass(frozen=True)
class GovernorPolicy:
    window_s: float = 1.0  # how many seconds of stepping each decision looks at
    # CPU-wait seconds per second of stepping above which the CPU counts as shared. Measured on 2 cores: two
    # engines side by side wait 1.03-1.04 s/s (one thread each then is 1.9x faster); a one-thread hog beside
    # the engine's two threads makes about 0.67; a server's own event loop plus a benchmark client at
    # concurrency 32 only 0.22, where two threads still made 747-761 tok/s against one thread's 536-609.
    shared_above: float = 0.5
    free_below: float = 0.05  # ... and below which it counts as free again
    first_backoff_s: float = 10.0  # how long to stay at one thread before trying the full count again
    max_backoff_s: float = 300.0


@dataclass(frozen=True)
class GovernorState:
    threads: int
    backoff_s: float
    retry_at: float  # when one thread may try the full count again


def decide(state: GovernorState, waited_per_s: float, max_threads: int, now: float,
           policy: GovernorPolicy = GovernorPolicy()) -> GovernorState:
    """The next thread count from the last window's CPU wait. Pure, so it is tested over scripted traces."""
    if state.threads > 1 and waited_per_s > policy.shared_above:
        return GovernorState(max(1, state.threads // 2), state.backoff_s, now + state.backoff_s)
    if state.threads < max_threads and now >= state.retry_at and waited_per_s < policy.free_below:
        # Try the full count; if the CPU is still shared the next window drops back, with a longer back-off.
        return GovernorState(max_threads, min(2 * state.backoff_s, policy.max_backoff_s), now)
    if state.threads > 1 and waited_per_s < policy.free_below and state.backoff_s != policy.first_backoff_s:
        return GovernorState(state.threads, policy.first_backoff_s, state.retry_at)  # it had the CPU: forgive
    return state


class ThreadGovernor:
    """Told the duration of every engine step; decides once per window of stepping (idle time between steps
    does not count, so a quiet server does not look like a free CPU). `close()` restores the thread count."""

    def __init__(self, policy: GovernorPolicy = GovernorPolicy(), max_threads: int | None = None):
        self.policy = policy
        self.max_threads = max_threads or torch.get_num_threads()
        self._waited = cpu_wait_seconds()
        self.enabled = self.max_threads > 1 and self._waited is not None
        self.state = GovernorState(self.max_threads, policy.first_backoff_s, 0.0)
        self.changes = 0
        self._stepping_s = 0.0

    @property
    def threads(self) -> int:
        return self.state.threads

    def after_step(self, duration_s: float, now: float) -> None:
        if not self.enabled:
            return
        self._stepping_s += duration_s
        if self._stepping_s < self.policy.window_s:
            return
        waited = cpu_wait_seconds()
        if waited is None:
            return
        waited_per_s = (waited - self._waited) / self._stepping_s
        new = decide(self.state, waited_per_s, self.max_threads, now, self.policy)
        if new.threads != self.state.threads:
            torch.set_num_threads(new.threads)
            self.changes += 1
            log.info("labkit engine: %s torch threads (they waited %.2f s per s for a CPU)", new.threads,
                     waited_per_s)
        self.state, self._waited, self._stepping_s = new, waited, 0.0

    def close(self) -> None:
        if self.enabled and torch.get_num_threads() != self.max_threads:
            torch.set_num_threads(self.max_threads)
