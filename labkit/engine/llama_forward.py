"""A lean forward pass for the Llama family (Llama, Mistral, Qwen2): transformers' math in fewer torch calls.

Why: on a CPU a small model's step pays a few microseconds of dispatch per torch call before any arithmetic.
Through transformers' modules a decode step of the default model made about 6,400 operator calls (counted by
torch's profiler, notebook 02); this forward runs the same layers from the same weight tensors with about
4,900, and its steps were 1.2-1.3x faster in the notebook's runs:

* q, k and v are one matmul, and so are the MLP's gate and up projections (weights concatenated once; in
  bfloat16 on a CPU also reordered once for oneDNN, as `packed_linear` does for the generic path);
* rotary embeddings turn q and k together, from one cos/sin lookup per step;
* only the rows that will be sampled go through the final norm and the LM head.

Each operation is the one transformers' module runs, in the same dtype and order, so float32 results match
the generic path (tests compare both with HF `generate`). Other architectures (GPT-2, Qwen3's q/k norms,
Gemma's scaled embeddings, ...) take the generic path: any module that routes attention through
`AttentionInterface`. `unsupported_reason` says which path a model gets.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import cpu_kernels
from .packed_linear import pack_weight, packed_matmul, packing_available, packs_identically

FAMILY = ("llama", "mistral", "qwen2")


def unsupported_reason(model) -> str | None:
    """None when `model` can take the lean forward; else why it takes the generic one."""
    config = model.config
    if config.model_type not in FAMILY:
        return f"model_type {config.model_type!r} is not one of {', '.join(FAMILY)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the lean forward implements silu)"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    try:
        _ = (model.model.embed_tokens, model.model.norm, model.model.rotary_emb, model.lm_head)
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            _ = (attention.scaling, layer.input_layernorm, layer.post_attention_layernorm)
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj,
                               mlp.gate_proj, mlp.up_proj, mlp.down_proj):
                if type(projection) is not nn.Linear:  # quantized or otherwise replaced layers
                    return f"{type(projection).__name__} projections"
    except AttributeError as missing:
        return f"an unexpected module layout ({missing})"
    return None


class Projection:
    """One or more linear layers applied to the same input as one matmul, their outputs side by side.

    float32 keeps the layers apart (a concatenated weight may round differently, and float32 is where
    results are compared bit for bit with transformers); other dtypes concatenate the weights once (a copy),
    and bfloat16 on a CPU reorders that copy once for oneDNN. With `kernels` on a CPU with AMX, the weight is
    reordered once into AMX tiles instead, and every step multiplies through `cpu_kernels.linear_amx` (no
    oneDNN copy; with `gated`, an MLP's gate and up projections return silu(gate) * up from the same pass);
    without AMX, a step of a few tokens multiplies the plain bfloat16 weight through `cpu_kernels.linear`
    (which then keeps the concatenated copy beside the packed one).
    """

    def __init__(self, linears, pack: bool, batch_hint: int, kernels: bool = False, gated: bool = False):
        self.linears = list(linears)
        self.packed = self.amx = None
        self.kernels = self.gated = False
        weights = [lin.weight.detach() for lin in self.linears]
        biases = [lin.bias.detach() if lin.bias is not None else None for lin in self.linears]
        self.fused = weights[0].dtype != torch.float32 or len(weights) == 1
        if not self.fused:
            return
        self.weight = weights[0] if len(weights) == 1 else torch.cat(weights)
        if any(b is not None for b in biases):
            self.bias = torch.cat([b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)])
        else:
            self.bias = None
        on_cpu_bf16 = self.weight.dtype == torch.bfloat16 and self.weight.device.type == "cpu"
        self.kernels = kernels and on_cpu_bf16 and self.weight.is_contiguous()
        if self.kernels and cpu_kernels.amx_available():  # the tiles serve every batch size: no oneDNN copy
            # gated (an MLP's gate and up): silu(gate) * up comes out of the same pass
            self.gated = gated and self.bias is None and (self.weight.shape[0] // 2) % 16 == 0
            self.amx, self.weight = cpu_kernels.AmxWeight(self.weight, gated=self.gated), None
            return
        if pack and on_cpu_bf16 and packing_available():
            packed = pack_weight(self.weight, batch_hint)
            if packs_identically(self.weight, packed, self.bias):  # else this oneDNN build rounds differently
                self.packed = packed
                if len(weights) > 1 and not self.kernels:
                    self.weight = None  # the concatenated copy is not needed beside its packed one

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x @ weight.T + bias, plus `residual` when given (the product rounded to the dtype first)."""
        if self.amx is not None:
            return cpu_kernels.linear_amx(x, self.amx, self.bias, residual)
        if self.kernels and x.shape[0] <= cpu_kernels.MAX_ROWS:
            return cpu_kernels.linear(x, self.weight, self.bias, residual)
        if self.packed is not None:
            out = packed_matmul(x, self.packed, self.bias)
        elif self.fused:
            out = F.linear(x, self.weight, self.bias)
        else:
            out = torch.cat([F.linear(x, lin.weight, lin.bias) for lin in self.linears], dim=-1)
        return out if residual is None else residual + out


class _Layer:
    def __init__(self, layer, pack: bool, batch_hint: int, kernels: bool):
        attention, mlp = layer.self_attn, layer.mlp
        self.qkv = Projection((attention.q_proj, attention.k_proj, attention.v_proj), pack, batch_hint, kernels)
        self.o = Projection((attention.o_proj,), pack, batch_hint, kernels)
        self.gate_up = Projection((mlp.gate_proj, mlp.up_proj), pack, batch_hint, kernels, gated=True)
        self.down = Projection((mlp.down_proj,), pack, batch_hint, kernels)
        self.input_norm = layer.input_layernorm
        self.post_norm = layer.post_attention_layernorm
        self.scaling = attention.scaling


def _rms_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """transformers' LlamaRMSNorm, call for call: float32 statistics, the weight applied in the input dtype."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


class LlamaForward:
    """`forward(input_ids, positions, keep) -> logits` over one packed row, attention by `attention`."""

    def __init__(self, model, attention, pack: bool, batch_hint: int = 32, kernels: bool = False):
        config = model.config
        self.attention = attention
        self.embed = model.model.embed_tokens
        self.rotary = model.model.rotary_emb
        self.final_norm = model.model.norm
        # labkit's kernels replicate bfloat16 math on a CPU; float32 stays on torch's ops (compared bit for bit).
        self.kernels = (kernels and cpu_kernels.unavailable_reason() is None
                        and model.lm_head.weight.dtype == torch.bfloat16 and model.lm_head.weight.device.type == "cpu")
        self.layers = [_Layer(layer, pack, batch_hint, self.kernels) for layer in model.model.layers]
        self.lm_head = Projection((model.lm_head,), pack, batch_hint, self.kernels)
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.split = ((self.num_heads + self.num_kv_heads) * self.head_dim, self.num_kv_heads * self.head_dim)
        self.half = self.head_dim // 2

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """transformers' apply_rotary_pos_emb on [tokens, heads, head_dim] (q and k heads together)."""
        first, second = x[..., :self.half], x[..., self.half:]
        return x * cos + torch.cat((-second, first), dim=-1) * sin

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        tokens = input_ids.shape[0]
        heads, kv_heads, head_dim = self.num_heads, self.num_kv_heads, self.head_dim
        h = self.embed(input_ids)  # [tokens, hidden]
        cos, sin = self.rotary(h, positions.unsqueeze(0))
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)  # [tokens, 1, head_dim]
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(self._norm(h, layer.input_norm))
            qk = self._rotate_qk(qkv, cos, sin)  # [tokens, heads + kv_heads, head_dim]
            v = qkv[:, self.split[0]:].view(tokens, kv_heads, head_dim)
            q, k = qk.split((heads, kv_heads), dim=1)
            out = self.attention.attend_layer(index, q.transpose(0, 1), k, v, layer.scaling)  # [tokens, heads, head_dim]
            h = layer.o(out.reshape(tokens, heads * head_dim), residual=h)
            hidden = layer.gate_up(self._norm(h, layer.post_norm))
            h = layer.down(hidden if layer.gate_up.gated else self._silu_mul(hidden), residual=h)
        return self.lm_head(self._norm(h.index_select(0, keep), self.final_norm))

    def _norm(self, x: torch.Tensor, norm) -> torch.Tensor:
        """The RMS norm: one `cpu_kernels` call (with the same roundings) in place of five to ten torch ops."""
        if self.kernels:
            return cpu_kernels.rms_norm(x, norm.weight, norm.variance_epsilon)
        return _rms_norm(x, norm)

    def _silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """The MLP's silu(gate) * up from the gate/up projection's output [tokens, 2 * intermediate]."""
        if self.kernels:
            return cpu_kernels.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)
        return F.silu(gate) * up

    def _rotate_qk(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """The q and k heads of each token's q/k/v row, rotated: [tokens, heads + kv_heads, head_dim]."""
        if self.kernels and cpu_kernels.rotary_fits(self.head_dim):  # reads the heads straight from the wider row
            return cpu_kernels.rotary(qkv, self.num_heads + self.num_kv_heads, self.head_dim, cos, sin)
        return self._rotate(qkv[:, :self.split[0]].view(qkv.shape[0], -1, self.head_dim), cos, sin)
