"""Export a Hugging Face model to an ONNX file: decoders with an explicit KV cache (past in, present
out) so generation feeds one new token per step instead of recomputing the prompt; encoders to their
last hidden state. Uses the TorchScript exporter, which traces the eager model once."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from ..models.loaded import LoadedModel
from .decode import cache_keyword

OPSET = 17


class _DecoderWithCache(torch.nn.Module):
    """Flat tensors in and out, as ONNX needs: (ids, mask, positions, k0, v0, k1, v1, ...) ->
    (logits, k0', v0', ...). The cache is rebuilt from the flat tensors inside the traced graph."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        name = cache_keyword(self.model)
        pairs = [(past[i], past[i + 1]) for i in range(0, len(past), 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{name: cache})
        present = [t for layer in getattr(out, name).layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


class _Encoder(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder's KV cache."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def export(loaded: LoadedModel, path: Path) -> Path:
    """Write `loaded` (fp32, eager attention, on CPU) to `path` and return it."""
    model = copy.deepcopy(loaded.model).float().cpu().eval()
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")  # SDPA's mask fast paths do not trace into ONNX cleanly
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow are expected
        if loaded.kind == "causal-lm":
            _export_decoder(model, path)
        else:
            _export_encoder(model, path)
    return path


def _export_decoder(model: torch.nn.Module, path: Path) -> None:
    layers, kv_heads, head_dim = cache_shape(model.config)
    batch, new, past_len = 2, 3, 4  # sizes > 1 so the tracer cannot fold them into constants
    past = [torch.randn(batch, kv_heads, past_len, head_dim) for _ in range(2 * layers)]
    inputs = (torch.ones(batch, new, dtype=torch.long), torch.ones(batch, past_len + new, dtype=torch.long),
              torch.arange(past_len, past_len + new).expand(batch, new), *past)
    past_names = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present_names = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    axes = {"input_ids": {0: "batch", 1: "new"}, "attention_mask": {0: "batch", 1: "total"},
            "position_ids": {0: "batch", 1: "new"}, "logits": {0: "batch", 1: "new"}}
    axes.update({name: {0: "batch", 2: "past"} for name in past_names})
    axes.update({name: {0: "batch", 2: "total"} for name in present_names})
    torch.onnx.export(_DecoderWithCache(model), inputs, str(path), dynamo=False, opset_version=OPSET,
                      input_names=["input_ids", "attention_mask", "position_ids", *past_names],
                      output_names=["logits", *present_names], dynamic_axes=axes)


def _export_encoder(model: torch.nn.Module, path: Path) -> None:
    batch, length = 2, 8
    inputs = (torch.ones(batch, length, dtype=torch.long), torch.ones(batch, length, dtype=torch.long),
              torch.zeros(batch, length, dtype=torch.long))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {name: {0: "batch", 1: "length"} for name in names} | {"last_hidden_state": {0: "batch", 1: "length"}}
    torch.onnx.export(_Encoder(model), inputs, str(path), dynamo=False, opset_version=OPSET,
                      input_names=names, output_names=["last_hidden_state"], dynamic_axes=axes)
