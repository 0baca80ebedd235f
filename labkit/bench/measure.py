"""Measuring honestly on a machine that may be shared: interleaved rounds, medians, a reading of CPU
contention, and tail names that do not overclaim. The notebooks and the benchmarks share these.

- **Interleaved rounds.** Systems run A, B, C, then B, C, A, ...: a neighbour that starts or stops half-way
  slows every system a little instead of whichever happened to run then, and no system always goes first.
- **Medians of at least three rounds**, with every round kept, so one bad round moves nothing and the
  reader can see whether the rounds agreed.
- **Contention.** Linux counts the time in which at least one runnable task waited for a CPU (pressure
  stall information, `/proc/pressure/cpu`); a share above a fifth of the wall time means the cores were
  shared while the measurement ran (by another process, or by the notebook's own clients and servers).
- **Tails.** A p99 of 30 samples is their maximum; `tail()` names it so.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..monitor.percentiles import Tail, tail, tail_name  # noqa: F401  (the tails' one definition, shared with monitor)

PRESSURE = "/proc/pressure/cpu"
SHARED_ABOVE = 0.2  # share of wall time with a task waiting for a CPU above which the cores count as shared
MIN_ROUNDS = 3
NOISE = 0.1  # medians closer than this (relative) are not called a difference


def cpu_pressure_seconds() -> float | None:
    """Seconds in which at least one runnable task here waited for a CPU (PSI "some" total); None where the
    kernel does not say."""
    try:
        with open(PRESSURE) as pressure:
            for line in pressure:
                if line.startswith("some"):
                    total = dict(field.split("=") for field in line.split()[1:])["total"]
                    return int(total) / 1e6
    except (OSError, KeyError, ValueError):
        return None
    return None


class ContentionMeter:
    """Share of wall time, since it was made, in which some task waited for a CPU (None where unknown)."""

    def __init__(self):
        self._pressure, self._t0 = cpu_pressure_seconds(), time.perf_counter()

    def share(self) -> float | None:
        now = cpu_pressure_seconds()
        wall = time.perf_counter() - self._t0
        if now is None or self._pressure is None or wall <= 0:
            return None
        return min(1.0, max(0.0, (now - self._pressure) / wall))


def contention_warning(share: float | None) -> str | None:
    """A sentence for the reader when the cores were shared, else None."""
    if share is None or share <= SHARED_ABOVE:
        return None
    return (f"Warning: for {share:.0%} of this measurement some task was waiting for a CPU, so the cores were "
            "shared (another process, or this notebook's own clients). The figures are slower and noisier "
            "than on a quiet machine; compare only figures measured together.")


@dataclass(frozen=True)
class Comparison:
    """Per-system values of interleaved rounds (in run order) and the contention while they ran."""
    rounds: dict[str, tuple[float, ...]]
    higher_is_better: bool = True
    contention: float | None = None

    def median(self, name: str) -> float:
        return statistics.median(self.rounds[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.rounds[name]), max(self.rounds[name])

    def ratio(self, a: str, b: str) -> float:
        """Median of `a` over median of `b`."""
        return self.median(a) / self.median(b) if self.median(b) else math.inf

    def best(self) -> str:
        pick = max if self.higher_is_better else min
        return pick(self.rounds, key=self.median)

    def beats_every_round(self, a: str, b: str) -> bool:
        """Whether `a` was better than `b` in every single round, not only in the median."""
        pairs = zip(self.rounds[a], self.rounds[b])
        return all(x > y if self.higher_is_better else x < y for x, y in pairs)

    @property
    def shared(self) -> bool:
        return self.contention is not None and self.contention > SHARED_ABOVE

    def warning(self) -> str | None:
        return contention_warning(self.contention)

    def verdict(self, a: str, b: str, what: str = "") -> str:
        """One sentence comparing `a` with `b` that holds for these rounds, whatever they were."""
        n = len(self.rounds[a])
        better, worse = (a, b) if self._better(a, b) else (b, a)
        factor = self.ratio(better, worse) if self.higher_is_better else self.ratio(worse, better)
        label = f" {what}" if what else ""
        if factor < 1 + NOISE and self.beats_every_round(better, worse):
            return (f"{better} was ahead of {worse}{label} in all {n} rounds, by under {NOISE:.0%} (median "
                    f"{factor:.2f}x): a small edge, but a consistent one in these rounds.")
        if factor < 1 + NOISE:  # a over b, as the caller named them, so it reads beside a table of ratios
            return (f"{a} and {b} were within {NOISE:.0%} of each other{label} ({a} / {b}: median ratio "
                    f"{self.ratio(a, b):.3f}x over {n} rounds): no difference to speak of on this machine, "
                    "this time.")
        if self.beats_every_round(better, worse):
            return f"{better} beat {worse}{label} in all {n} rounds (median {factor:.2f}x)."
        wins = sum(self._better_value(x, y) for x, y in zip(self.rounds[better], self.rounds[worse]))
        return (f"{better} was ahead of {worse}{label} in the median ({factor:.2f}x) but only in {wins} of {n} "
                "rounds: the machine's noise is as large as the difference.")

    def _better(self, a: str, b: str) -> bool:
        return self._better_value(self.median(a), self.median(b))

    def _better_value(self, x: float, y: float) -> bool:
        return x > y if self.higher_is_better else x < y

    def rows(self) -> list[dict]:
        """One row per system: median, min, max and every round, for a table or a DataFrame."""
        return [{"system": name, "median": self.median(name), "min": self.spread(name)[0],
                 "max": self.spread(name)[1], "rounds": list(values)} for name, values in self.rounds.items()]


def compare(systems: Mapping[str, Callable[[], float]], rounds: int = MIN_ROUNDS, *,
            higher_is_better: bool = True, warmup: bool = False) -> Comparison:
    """Run each system's callable `rounds` times, interleaved and rotating which goes first; each call
    returns one figure (tokens/s, seconds, ...). `warmup` runs each once, untimed, before the rounds."""
    if rounds < MIN_ROUNDS:
        raise ValueError(f"a comparison needs at least {MIN_ROUNDS} rounds for a median, got {rounds}")
    names = list(systems)
    if warmup:
        for name in names:
            systems[name]()
    meter = ContentionMeter()
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            values[name].append(float(systems[name]()))
    return Comparison({name: tuple(v) for name, v in values.items()}, higher_is_better, meter.share())
