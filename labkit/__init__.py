"""labkit: an interactive inference lab. load → serve → route → scale → monitor.

`import labkit` is cheap: each public name imports its subpackage (and with it torch, transformers or FastAPI)
the first time it is used, so the `labkit` command answers at once and `labkit monitor` never loads torch.
Everything else lives in the subpackages: `labkit.models`, `labkit.engine`, `labkit.server`, `labkit.scale`, ...
"""
import os as _os
import sys as _sys
import types as _types
import typing as _typing
from importlib import metadata as _metadata

from .lazy import lazy_exports as _lazy_exports

# The lab runs offline by design: keep libraries from phoning home.
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# A bounded spin for torch's OpenMP threads between ops (see openmp.py). Set here, before anything else: every
# labkit module runs this file first, so no path through labkit reaches torch before it.
from .openmp import apply_openmp_defaults as _apply_openmp_defaults  # noqa: E402

_apply_openmp_defaults(_os.environ)

__version__ = _metadata.version("labkit")

_EXPORTS = {  # along the flow
    "load_model": ".models", "Generator": ".generate", "stream_generate": ".generate",
    "optimize_model": ".optimize:optimize",
    "LLM": ".engine", "AsyncLLM": ".engine", "SamplingParams": ".engine", "EngineConfig": ".config",
    "serve": ".server", "ServerConfig": ".config",
    "route": ".route", "RouterConfig": ".config",
    "up": ".scale", "ScaleConfig": ".config",
    "monitor": None,
}
__all__ = ["__version__", "load_model", "Generator", "stream_generate", "optimize_model", "LLM", "AsyncLLM",
           "SamplingParams", "EngineConfig", "serve", "ServerConfig", "route", "RouterConfig", "up", "ScaleConfig", "monitor"]
# The subpackages along the flow, for `labkit.scale.ReplicaPool` and the like after a plain `import labkit`.
_EXPORTS.update(dict.fromkeys(("models", "optimize", "engine", "server", "scale")))
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

if _typing.TYPE_CHECKING:  # what each name is, for type checkers and IDEs
    from . import engine, models, monitor, optimize, scale, server
    from .config import EngineConfig, RouterConfig, ScaleConfig, ServerConfig
    from .engine import LLM, AsyncLLM, SamplingParams
    from .generate import Generator, stream_generate
    from .models import load_model
    from .optimize import optimize as optimize_model
    from .route import route
    from .scale import up
    from .server import serve


class _Package(_types.ModuleType):
    """Importing the subpackage `labkit.route` binds it as this package's attribute `route`, the name of the
    public function: keep the function."""

    def __setattr__(self, name, value):
        if isinstance(value, _types.ModuleType) and name in _EXPORTS and _EXPORTS[name] is not None:
            return  # __getattr__ gives the function
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
