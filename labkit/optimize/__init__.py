"""LOAD, optimized: turn a `LoadedModel` into a faster or smaller variant, and measure what it costs.

`OPTIMIZERS` maps each variant name to a function `LoadedModel -> LoadedModel`; the input is never
modified, so the fp32 reference stays available for accuracy comparisons."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from ..lazy import lazy_exports

# What a variant is (torch): imported on first use, so listing OPTIMIZERS (the `labkit` command does) is cheap.
__getattr__, __dir__ = lazy_exports(__name__, {"VARIANT_ATTRIBUTE": ".variant", "stored_bytes": ".variant",
                                               "variant_of": ".variant"})
if TYPE_CHECKING:
    from ..models.loaded import LoadedModel
    from .variant import VARIANT_ATTRIBUTE, stored_bytes, variant_of


def _lazy(module: str, function: str, **fixed) -> Callable[..., LoadedModel]:
    """Import each scheme only when used: onnx, bitsandbytes and inductor are slow to import."""
    def run(loaded: LoadedModel, **options) -> LoadedModel:
        from importlib import import_module

        from ..extras import needs

        with needs(f"the {function} optimizer"):
            return getattr(import_module(f"{__name__}.{module}"), function)(loaded, **{**fixed, **options})
    run.__name__ = function
    return run


OPTIMIZERS: dict[str, Callable[..., LoadedModel]] = {
    "fp32": _lazy("dtype", "fp32"),
    "bf16": _lazy("dtype", "bf16"),
    "torch-int8": _lazy("torch_int8", "torch_int8"),
    "bnb-8bit": _lazy("bnb", "bnb_8bit"),
    "bnb-4bit": _lazy("bnb", "bnb_4bit"),
    "prune": _lazy("prune", "prune"),
    "prune-structured": _lazy("prune", "prune_structured"),
    "onnx": _lazy("onnx_runtime", "onnx_variant"),
    "onnx-int8": _lazy("onnx_runtime", "onnx_variant", quantize=True),
    "compile": _lazy("compile", "compile_model"),
}

# Variants that run in their own runtime, not as a torch module the engine can drive with its KV cache.
OUTSIDE_ENGINE = frozenset({"onnx", "onnx-int8"})


def optimize(loaded: LoadedModel, variant: str, **options) -> LoadedModel:
    """`optimize(load_model("smollm2-135m-instruct"), "torch-int8")`; options go to the scheme
    (e.g. `sparsity=0.5` for prune, `level="basic"` for onnx)."""
    if variant not in OPTIMIZERS:
        raise ValueError(f"unknown optimization {variant!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[variant](loaded, **options)


def unservable_reason(loaded: LoadedModel) -> str | None:
    """Why the engine cannot serve this variant (None when it can): the engine drives a Hugging Face
    model's forward with its own KV cache, which an ONNX Runtime session does not expose."""
    return getattr(loaded.model, "unservable_reason", None)


__all__ = ["OPTIMIZERS", "OUTSIDE_ENGINE", "VARIANT_ATTRIBUTE", "optimize", "stored_bytes", "unservable_reason", "variant_of"]
