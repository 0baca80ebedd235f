"""labkit's OpenMP defaults for torch's CPU threads, set by `import labkit` before torch loads.

torch's OpenMP threads (libgomp) spin a bounded while between parallel regions, then sleep. Spinning without
end stalls every op when another process takes a core (two engines on two cores: 5x slower); sleeping at once
(OMP_WAIT_POLICY=PASSIVE) makes the engine benchmark 1.9x slower on a free 2-core CPU and batch-1 decoding 2x
slower (benchmarks/RESULTS.md). So: GOMP_SPINCOUNT bounds the spin, and OMP_WAIT_POLICY=ACTIVE, which with an
explicit GOMP_SPINCOUNT changes only libgomp's *throttled* spin, the one it uses once a process has more
OpenMP threads than cores. A server has: the engine thread and the main thread each get their own team. There
PASSIVE leaves 100 spins, ACTIVE 1,000, and the server makes 258 or 423 tokens/s on the same load.
KMP_BLOCKTIME bounds Intel's runtime likewise, for those who preload it. The engine also uses fewer threads
while another process shares the CPU (engine/threads.py). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""
from __future__ import annotations

from collections.abc import MutableMapping

DEFAULTS = {"GOMP_SPINCOUNT": "10000",  # libgomp: spin this many rounds between ops, then sleep
            "OMP_WAIT_POLICY": "ACTIVE",  # libgomp, with the count above: 1,000 throttled spins, not 100
            "KMP_BLOCKTIME": "1"}  # Intel's OpenMP (if preloaded): spin 1 ms, then sleep


def apply_openmp_defaults(environ: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Set labkit's defaults in `environ` unless the user chose a wait policy; any default the user set
    already stays theirs. Returns `environ`. Only takes effect in a process that has not loaded torch yet
    (or in a child's environment)."""
    if not any(name in environ for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")):
        for name, value in DEFAULTS.items():
            environ.setdefault(name, value)
    return environ
