"""`load_model`: one entry point for aliases, local directories and Hugging Face ids, offline first."""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from .loaded import LoadedModel
from .registry import ALIASES, ModelKind
from .sources import locate, rebuild, resolve_alias

log = logging.getLogger(__name__)

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def load_model(
    name_or_path: str,
    *,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    trust_remote_code: bool = False,
    progress: bool = True,
    optimize: str | None = None,
) -> LoadedModel:
    """Load a model for inference.

    `name_or_path` is an alias (see `labkit models`), a local Hugging Face directory, or a hub id that
    is cached or reachable. `device="auto"` picks CUDA when present; `dtype="auto"` picks bfloat16 where
    the hardware computes in it natively, else float32. Remote code runs only with `trust_remote_code`.
    `optimize` names a variant from `labkit.optimize.OPTIMIZERS` ("torch-int8", "bnb-4bit", "onnx", ...)
    applied after loading; its time is included in `load_seconds`.
    """
    from ..optimize import OPTIMIZERS, optimize as apply_optimization  # each scheme imports lazily

    if optimize is not None and optimize not in OPTIMIZERS:  # fail before a long load, not after
        raise ValueError(f"optimize={optimize!r} is not one of: {', '.join(OPTIMIZERS)}.")
    started = time.perf_counter()
    with _transformers_progress(progress):
        loaded = _load(name_or_path, device, dtype, trust_remote_code, progress, started)
    return loaded if optimize is None else apply_optimization(loaded, optimize)


def _load(name_or_path: str, device: str, dtype: str | torch.dtype, trust_remote_code: bool, progress: bool,
          started: float) -> LoadedModel:
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    alias = ALIASES.get(name_or_path)
    if alias is not None:
        source = resolve_alias(alias, progress=progress)
        try:
            model, tokenizer = _from_pretrained(str(source), alias.kind, torch_dtype, torch_device, False, local=True)
        except Exception:
            if not alias.gguf_file:
                raise
            # sizes matched the manifest but the bytes did not parse: rebuild once, then trust it
            log.warning("labkit: cached %s failed to load; rebuilding it", alias.name)
            source = rebuild(alias)
            model, tokenizer = _from_pretrained(str(source), alias.kind, torch_dtype, torch_device, False, local=True)
        kind = alias.kind
    else:
        source, local = locate(name_or_path)
        kind = detect_kind(source, trust_remote_code, local)
        model, tokenizer = _from_pretrained(source, kind, torch_dtype, torch_device, trust_remote_code, local)
    model.eval()
    return LoadedModel(
        name=name_or_path,
        source=str(source),
        kind=kind,
        model=model,
        tokenizer=tokenizer,
        device=torch_device,
        dtype=torch_dtype,
        num_parameters=sum(p.numel() for p in model.parameters()),
        weight_bytes=weight_bytes(model),
        load_seconds=time.perf_counter() - started,
    )


@contextmanager
def _transformers_progress(enabled: bool):
    """transformers draws its own 'Loading weights' bars; `progress=False` should silence them too."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for, but this machine has no CUDA device; use 'cpu' or 'auto'.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype={dtype!r} is not one of: auto, {', '.join(names)}.")
    return names[dtype]


def native_bf16(device: torch.device) -> bool:
    """bf16 halves weight memory; it is only faster where the hardware multiplies in it natively."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def weight_bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}  # tied weights once
    return sum(t.numel() * t.element_size() for t in tensors.values())


def detect_kind(source: str, trust_remote_code: bool, local: bool) -> ModelKind:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, local_files_only=local)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{source} is an encoder-decoder model ({config.model_type}); labkit serves decoder LLMs and encoders.")
    architectures = getattr(config, "architectures", None) or []
    return "causal-lm" if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) else "encoder"


def _from_pretrained(source: str, kind: ModelKind, dtype: torch.dtype, device: torch.device,
                     trust_remote_code: bool, local: bool):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    options = dict(trust_remote_code=trust_remote_code, local_files_only=local)
    model = auto.from_pretrained(source, dtype=dtype, **options).to(device)
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    if kind == "causal-lm" and tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # batched baselines pad; EOS is the usual stand-in
    return model, tokenizer
