"""labkit's OpenMP defaults for torch's CPU threads, set by `import labkit` before torch loads.

torch's OpenMP threads (libgomp) spin a bounded while between parallel regions, then sleep. Spinning without
end (libgomp's default) stalls every op when another process takes a core (4x slower engine steps under
load); sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes engine steps 1.7x slower on a free 2-core CPU and
batch-1 decoding 2x slower (benchmarks/RESULTS.md). The engine also uses fewer threads while another process
shares the CPU (engine/threads.py). A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
"""
from __future__ import annotations

from collections.abc import MutableMapping

DEFAULTS = {"GOMP_SPINCOUNT": "10000",  # libgomp: spin this many rounds between ops, then sleep
            "OMP_WAIT_POLICY": "PASSIVE"}  # other OpenMP runtimes: sleep when idle


def apply_openmp_defaults(environ: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Set labkit's defaults in `environ` unless the user chose a wait policy; returns `environ`.
    Only takes effect in a process that has not loaded torch yet (or in a child's environment)."""
    if not any(name in environ for name in DEFAULTS):
        environ.update(DEFAULTS)
    return environ
