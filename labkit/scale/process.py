"""One replica: a `labkit serve` process, its state, and how many threads it was given."""
from __future__ import annotations

import enum
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class ReplicaState(enum.IntEnum):
    """Ordered: a replica only moves forward, and `state >= DRAINING` means it takes no new requests."""
    STARTING = 0
    READY = 1
    DRAINING = 2
    STOPPED = 3


@dataclass(eq=False)
class Replica:
    name: str
    process: subprocess.Popen
    log_path: Path
    threads: int
    started_at: float = field(default_factory=time.monotonic)
    url: str | None = None
    state: ReplicaState = ReplicaState.STARTING
    ready_at: float | None = None
    health_misses: int = 0
    stop_deadline: float | None = None
    exit_reason: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"Replica({self.name}, {self.state.name.lower()}, {self.url or 'no url yet'}, pid {self.pid})"


def default_threads(replicas: int) -> int:
    """Split the cores evenly between replicas, at least one thread each."""
    return max(1, (os.cpu_count() or 1) // max(1, replicas))
