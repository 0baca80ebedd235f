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

The allocator matters as much: torch on a CPU allocates and frees many small tensors each step, and tcmalloc
(Debian: libtcmalloc-minimal4) serves them faster than glibc's malloc. It only works preloaded, from process
start, so the commands that run the engine for long (`labkit serve`, its replicas, the benchmarks) start
again once with it in LD_PRELOAD (`restart_tuned`); `--no-tune` keeps the process as it is.
"""
from __future__ import annotations

import os
import sys
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


TCMALLOC_PATHS = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
                  "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4")
TUNED_MARK = "LABKIT_TUNED"  # set in a tuned process's environment, so it does not start again


def tcmalloc_path() -> str | None:
    return next((path for path in TCMALLOC_PATHS if os.path.exists(path)), None)


def tuned_environment(environ: MutableMapping[str, str]) -> dict:
    """A copy of `environ` with labkit's OpenMP defaults and tcmalloc preloaded when the system has it."""
    env = apply_openmp_defaults(dict(environ))
    tcmalloc = tcmalloc_path()
    if tcmalloc and tcmalloc not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD")) if p)
    env[TUNED_MARK] = "1"
    return env


def restart_tuned() -> None:
    """Start this `labkit` command again (same arguments, same process id) in the tuned environment, unless
    it already runs in one. Returns only when nothing needs to change."""
    if os.environ.get(TUNED_MARK) == "1":
        return
    env = tuned_environment(os.environ)
    if env.get("LD_PRELOAD", "") == os.environ.get("LD_PRELOAD", "") and all(
            os.environ.get(k) == env.get(k) for k in DEFAULTS):
        os.environ[TUNED_MARK] = "1"  # nothing to gain from a restart
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "labkit.cli", *sys.argv[1:]], env)
