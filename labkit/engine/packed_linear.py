"""bfloat16 linear layers with weights prepacked once for oneDNN, while an engine is attached.

`F.linear` on a CPU hands oneDNN a plain row-major weight, which it reorders into its blocked layout on every
call. Reordering once (what torch.compile's freezing pass does) makes each of the ~200 small matmuls of a
decode step about 20% faster, with bit-identical results in bfloat16. In float32 the packed kernel rounds
differently from `F.linear`, so float32 models (whose outputs the tests compare token for token with HF
`generate`) are left alone. The packed copy costs the weights' size again in memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def packing_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_weight(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """`weight` reordered once into oneDNN's blocked layout (an opaque tensor for `packed_matmul`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for 2-D `x`, with the weight packed by `pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def packs_identically(weight: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """True when the packed matmul gives exactly what `F.linear` gives (a guard run once at attach time)."""
    x = torch.randn(3, weight.shape[1], dtype=weight.dtype)
    with torch.inference_mode():
        return torch.equal(packed_matmul(x, packed, bias), F.linear(x, weight, bias))


class _PackedForward:
    """Replaces one `nn.Linear.forward` (as an instance attribute, so removing it restores the original)."""

    def __init__(self, linear: nn.Linear, batch_hint: int):
        self.linear = linear
        self.packed = pack_weight(linear.weight, batch_hint)
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = linear.out_features

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or torch.is_grad_enabled():  # not the engine's forward: the plain layer
            return F.linear(x, self.linear.weight, self.linear.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = packed_matmul(flat, self.packed, self.bias)
        return out.view(*x.shape[:-1], self.out_features)


def prepack_linears(model: nn.Module, batch_hint: int = 32) -> list[nn.Linear]:
    """Prepack every bfloat16 CPU `nn.Linear` of `model`; returns the layers changed (for `unpack_linears`)."""
    if not packing_available():
        return []
    changed = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if (type(module) is nn.Linear and weight is not None and weight.dtype == torch.bfloat16
                and weight.device.type == "cpu"):
            module.forward = _PackedForward(module, batch_hint)
            changed.append(module)
    return changed


def unpack_linears(layers: list[nn.Linear]) -> None:
    for module in layers:
        module.__dict__.pop("forward", None)


def check_identical(layer: nn.Linear) -> bool:
    """True when a layer prepacked by `prepack_linears` gives exactly what `F.linear` gives."""
    return packs_identically(layer.weight, layer.forward.packed, layer.forward.bias)
