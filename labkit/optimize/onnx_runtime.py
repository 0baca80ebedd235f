"""Run an exported model with ONNX Runtime behind the same call contract as a Hugging Face model, so
accuracy and timing code treat both alike. `onnx-int8` adds ONNX Runtime dynamic quantization."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..models.loaded import LoadedModel
from .onnx_export import cache_shape, export
from .variant import derive

LEVELS = ("disable", "basic", "extended", "all")
# Fastest first; the first one onnxruntime reports as available is used.
PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
UNSERVABLE = ("ONNX Runtime variants run their own graph with a KV cache passed as tensors; the labkit "
              "engine drives a Hugging Face model's forward and paged KV cache, so it cannot serve them. "
              "Use torch-int8, bf16, bnb-8bit or bnb-4bit with the engine.")


def choose_providers(device: torch.device) -> list[str]:
    """GPU providers only when the model was asked for on CUDA and onnxruntime-gpu provides them."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = PROVIDER_PREFERENCE if device.type == "cuda" else ("CPUExecutionProvider",)
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def onnx_variant(loaded: LoadedModel, *, quantize: bool = False, level: str = "all") -> LoadedModel:
    import onnxruntime as ort

    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="labkit-onnx-") as folder:
        path = export(loaded, Path(folder) / "model.onnx")
        if quantize:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantized = Path(folder) / "model.int8.onnx"
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=float_nodes(path))
            path = quantized
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level.upper()}"
                                                   if level != "disable" else "ORT_DISABLE_ALL")
        options.intra_op_num_threads = torch.get_num_threads()
        # ONNX Runtime's threads spin after each run by default, stealing the cores PyTorch (the engine,
        # the other variants being timed) needs next: measured 10x slower fp32 prefill right after it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=choose_providers(loaded.device))
        size = path.stat().st_size
    wrapper = OnnxCausalLM if loaded.kind == "causal-lm" else OnnxEncoder
    model = wrapper(session, loaded.model.config, size, level)
    return derive(loaded, model, "onnx-int8" if quantize else "onnx", started, dtype=torch.float32)


def float_nodes(path: Path) -> list[str]:
    """MatMuls kept in float for the same reason as torch-int8: the MLP down projection's inputs carry
    outlier activations and the LM head feeds every token choice (see torch_int8.KEEP_FLOAT)."""
    import onnx

    from .torch_int8 import KEEP_FLOAT

    graph = onnx.load(str(path), load_external_data=False).graph
    keys = [k.replace(".", "/") for k in KEEP_FLOAT] + list(KEEP_FLOAT)
    return [node.name for node in graph.node if node.op_type == "MatMul" and any(k in node.name for k in keys)]


class _OnnxModel:
    unservable_reason = UNSERVABLE

    def __init__(self, session, config, weight_bytes: int, level: str):
        self.session = session
        self.config = config
        self.weight_bytes = weight_bytes  # the ONNX file size: weights plus a little graph
        self.graph_optimization_level = level
        self.providers = session.get_providers()  # what ONNX Runtime actually uses, reported in tables

    def eval(self):
        return self

    def parameters(self):
        """Code that expects a torch module (the engine reads its device from the first parameter) gets
        the reason it cannot use this variant instead of an AttributeError."""
        raise TypeError(self.unservable_reason)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(providers={self.providers}, level={self.graph_optimization_level!r})"


class OnnxCausalLM(_OnnxModel):
    """`model(input_ids, attention_mask, position_ids, past_key_values)` -> `.logits`, `.past_key_values`."""

    def __call__(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        ids = input_ids.cpu().numpy()
        mask = attention_mask.cpu().numpy().astype(np.int64)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:]
        if past_key_values is None:
            layers, kv_heads, head_dim = cache_shape(self.config)
            empty = np.zeros((ids.shape[0], kv_heads, 0, head_dim), dtype=np.float32)
            past_key_values = [empty] * (2 * layers)
        feed = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids.cpu().numpy()}
        feed.update({name: value for name, value in zip(self._past_names(), past_key_values)})
        logits, *present = self.session.run(None, feed)
        return SimpleNamespace(logits=torch.from_numpy(logits), past_key_values=present)

    def _past_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()][3:]


class OnnxEncoder(_OnnxModel):
    """`model(input_ids, attention_mask, token_type_ids)` -> `.last_hidden_state`, so `LoadedModel.embed` works."""

    def __call__(self, input_ids, attention_mask, token_type_ids=None, **_):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy(),
                "token_type_ids": token_type_ids.cpu().numpy()}
        (states,) = self.session.run(None, feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(states))
