"""SERVE core: continuous batching of requests over a paged KV cache (`LLM`, `AsyncLLM`)."""
from .async_engine import AsyncLLM
from .engine import LLMEngine, StepRecord
from .kv_cache import PagedKVCache
from .llm import LLM
from .outputs import RequestMetrics, RequestOutput
from .request import Request, RequestStatus
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .structured_output import StructuredOutputError, StructuredOutputsParams

__all__ = ["LLM", "AsyncLLM", "LLMEngine", "PagedKVCache", "Request", "RequestMetrics", "RequestOutput",
           "RequestStatus", "SamplingParams", "Scheduler", "StepRecord", "StructuredOutputError",
           "StructuredOutputsParams"]
