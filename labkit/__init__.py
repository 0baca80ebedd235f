"""labkit: an interactive inference lab. load → serve → route → scale → monitor."""
import os as _os

# The lab runs offline by design: keep libraries from phoning home.
_os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
_os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# A bounded spin for torch's OpenMP threads between ops (see openmp.py); before torch is imported.
from .openmp import apply_openmp_defaults as _apply_openmp_defaults  # noqa: E402

_apply_openmp_defaults(_os.environ)

from .config import ModelConfig, ServerConfig  # noqa: E402
from .generate import stream_generate  # noqa: E402
from .models import LoadedModel, ModelNotFoundError, load_model  # noqa: E402
from .optimize import OPTIMIZERS, optimize as optimize_model  # noqa: E402
from .optimize.accuracy import perplexity  # noqa: E402
from .bench.optimize_bench import OptimizeWorkload, run_optimize_bench as bench_optimize  # noqa: E402
from .server import ServerHandle, serve  # noqa: E402

__all__ = ["LoadedModel", "ModelConfig", "ModelNotFoundError", "ServerConfig", "ServerHandle", "load_model", "serve",
           "stream_generate"]
__all__ += ["OPTIMIZERS", "OptimizeWorkload", "bench_optimize", "optimize_model", "perplexity"]
from .config import EngineConfig  # noqa: E402
from .engine import LLM, AsyncLLM, RequestOutput, SamplingParams  # noqa: E402
from .bench.engine_bench import bench_engine  # noqa: E402

__all__ += ["AsyncLLM", "EngineConfig", "LLM", "RequestOutput", "SamplingParams", "bench_engine"]
from . import monitor  # noqa: E402  (labkit.monitor.source(server or url), labkit.monitor.Snapshot, ...)

__all__ += ["monitor"]
from .config import RouterConfig, ScaleConfig  # noqa: E402
from .route import POLICIES, Router, RouterHandle, StaticPool, route  # noqa: E402
from .scale import Autoscaler, Deployment, LoadPattern, ReplicaPool, run_load, start_load, up  # noqa: E402

__all__ += ["Autoscaler", "Deployment", "LoadPattern", "POLICIES", "ReplicaPool", "Router", "RouterConfig",
            "RouterHandle", "ScaleConfig", "StaticPool", "route", "run_load", "start_load", "up"]
