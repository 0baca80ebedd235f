"""SCALE: replica processes, the autoscaler, the load generator, and `up` (router + pool + autoscaler)."""
from .autoscaler import Autoscaler, Signals, decide
from .deploy import Deployment, up
from .loadgen import LoadPattern, LoadResult, RequestResult, run_load, start_load
from .replica import Replica, ReplicaPool, ReplicaState

__all__ = ["Autoscaler", "Deployment", "LoadPattern", "LoadResult", "Replica", "ReplicaPool", "ReplicaState",
           "RequestResult", "Signals", "decide", "run_load", "start_load", "up"]
