"""torch dynamic int8: Linear weights stored as int8, activations quantized per batch on the fly.

CPU only (fbgemm/x86 kernels). Decode at batch 1 reads every weight once per token, so quartering the
bytes read is what makes it fast; prefill of long prompts gains less because it is compute bound.

Measured on SmolLM2-135M: quantizing every Linear per-tensor triples perplexity (23 -> 79). Two fixes:
per-output-channel weight scales, and leaving in float the layers whose *inputs* carry the outlier
activations LLMs are known for (the MLP down projection) plus the output head, whose logits every
token depends on. That keeps perplexity within ~13%. The speed it buys depends on the CPU: 1.65x fp32's
batch-1 decode on the AMD EPYC of benchmarks/RESULTS.md, 1.0-1.2x on the Intel Xeon where notebook 07 last ran."""
from __future__ import annotations

import time
import warnings

import torch

from ..models.loaded import LoadedModel
from .variant import derive, private_copy


# Substrings of module names kept in float: MLP output projections (Llama/Qwen/Mistral, GPT-2, BERT-style)
# and the LM head. Per-tensor int8 activations cannot represent their inputs' outliers.
KEEP_FLOAT = ("down_proj", "mlp.c_proj", "output.dense", "lm_head")


def torch_int8(loaded: LoadedModel, *, keep_float: tuple[str, ...] = KEEP_FLOAT) -> LoadedModel:
    if loaded.device.type != "cpu":
        raise ValueError("torch-int8 runs on CPU only (dynamic quantization kernels are fbgemm/x86); "
                         "on a GPU use bnb-8bit or bnb-4bit.")
    started = time.perf_counter()
    model = private_copy(loaded).float()  # dynamic quantization starts from fp32 weights
    conv1d_to_linear(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao, still works
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        spec = {name: qconfig for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear) and not any(k in name for k in keep_float)}
        model = torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)
    return derive(loaded, model, "torch-int8", started, dtype=torch.float32)


def conv1d_to_linear(model: torch.nn.Module) -> int:
    """GPT-2 stores its projections as transformers' Conv1D (weight transposed), which quantize_dynamic
    does not know; an equivalent nn.Linear is. Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                in_features, out_features = child.weight.shape
                linear = torch.nn.Linear(in_features, out_features, dtype=child.weight.dtype)
                linear.weight.data = child.weight.data.t().contiguous()
                linear.bias.data = child.bias.data
                setattr(parent, name, linear)
                replaced += 1
    return replaced
