"""labkit's own bfloat16 CPU kernels (engine/cpu_kernels.py) against the torch ops they replace."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from labkit.engine import cpu_kernels

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(cpu_kernels.unavailable_reason() is not None,
                                 reason=f"no labkit CPU kernels here: {cpu_kernels.unavailable_reason()}")]


def bf16(*shape, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).to(torch.bfloat16)


def _few_rows(x, weight, bias=None, residual=None):
    return cpu_kernels.linear(x, weight, bias, residual)


def _tiles(x, weight, bias=None, residual=None):
    return cpu_kernels.linear_amx(x, cpu_kernels.AmxWeight(weight), bias, residual)


needs_amx = pytest.mark.skipif(not cpu_kernels.amx_available(), reason="this CPU has no AMX tiles for bfloat16")
MATMULS = [pytest.param(_few_rows, cpu_kernels.MAX_ROWS, id="few-rows"),
           pytest.param(_tiles, 130, id="amx", marks=needs_amx)]
# each matmul at the token counts it takes: the few-row kernel up to MAX_ROWS, the tiles past a 32-row pass too
SIZES = ([pytest.param(_few_rows, tokens, id=f"few-rows-{tokens}") for tokens in (1, 3, cpu_kernels.MAX_ROWS)]
         + [pytest.param(_tiles, tokens, id=f"amx-{tokens}", marks=needs_amx) for tokens in (1, 3, 8, 17, 130)])


@pytest.mark.parametrize("matmul, tokens", SIZES)
@pytest.mark.parametrize("rows, cols", [(960, 576), (49, 1536), (7, 100), (1, 31)])
def test_linear_is_as_close_to_the_exact_product_as_torch_is(matmul, tokens, rows, cols):
    weight, x, bias = bf16(rows, cols, seed=1, scale=0.05), bf16(tokens, cols, seed=2), bf16(rows, seed=3)
    exact = x.double() @ weight.double().T + bias.double()
    ours, theirs = matmul(x, weight, bias), F.linear(x, weight, bias)
    assert ours.shape == theirs.shape == (tokens, rows) and ours.dtype == torch.bfloat16
    ulp = exact.abs().clamp_min(1e-3) * 2 ** -7  # one bfloat16 step at each value
    assert ((ours.double() - exact).abs() <= ulp).all(), "more than one rounding away from the exact product"
    assert (ours != theirs).float().mean() < 0.05, "only last-bit differences from F.linear, and few"


@pytest.mark.parametrize("matmul, most_tokens", MATMULS)
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_linear_adds_the_residual_after_rounding_the_product_like_two_torch_ops(matmul, most_tokens, tokens):
    tokens = min(tokens, most_tokens)
    weight, x, residual = bf16(64, 64, seed=4, scale=0.1), bf16(tokens, 64, seed=5), bf16(tokens, 64, seed=6)
    product = matmul(x, weight)
    assert torch.equal(matmul(x, weight, residual=residual), residual + product)


@needs_amx
@pytest.mark.parametrize("tokens", [1, 5, 40])
def test_a_gated_amx_weight_gives_silu_gate_times_up_as_the_two_step_kernels_do(tokens):
    weight, x = bf16(2 * 1536, 576, seed=20, scale=0.05), bf16(tokens, 576, seed=21)
    fused = cpu_kernels.linear_amx(x, cpu_kernels.AmxWeight(weight, gated=True))
    assert torch.equal(fused, cpu_kernels.silu_mul(_tiles(x, weight)))  # same roundings, one pass
    gate, up = F.linear(x, weight).chunk(2, dim=-1)
    expected = F.silu(gate) * up
    assert fused.shape == (tokens, 1536) and (fused != expected).float().mean() < 0.01


@needs_amx
def test_amx_tiles_hold_the_weight_padded_to_whole_tiles():
    weight = bf16(17, 33, seed=9)
    tiles = cpu_kernels.AmxWeight(weight).tiles.view(2, 2, 16, 16, 2)  # [n blocks, k blocks, k pairs, n, 2]
    assert torch.equal(tiles[0, 0, 3, 5], weight[5, 6:8])  # output 5, inputs 6 and 7
    assert torch.equal(tiles[1, 1, 0, 0], torch.stack([weight[16, 32], torch.tensor(0, dtype=torch.bfloat16)]))
    assert not tiles[1, :, :, 1:].any()  # outputs 17.. are padding


@pytest.mark.parametrize("rows", [1, 40])
def test_rms_norm_matches_transformers_llama_norm(rows):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5).to(torch.bfloat16)
    norm.weight.data = bf16(576, seed=7, scale=0.3) + 1
    x = bf16(rows, 576, seed=8, scale=3)
    with torch.inference_mode():
        expected = norm(x)
    ours = cpu_kernels.rms_norm(x, norm.weight, norm.variance_epsilon)
    assert (ours != expected).float().mean() < 0.01 and (ours.float() - expected.float()).abs().max() <= 0.02 * expected.abs().max()


@pytest.mark.parametrize("tokens", [1, 20])
def test_rotary_of_a_slice_of_a_wider_row_matches_transformers(tokens):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    heads, kv_heads, dim = 9, 3, 64
    qkv = bf16(tokens, (heads + 2 * kv_heads) * dim, seed=10)
    angles = torch.arange(tokens).unsqueeze(1) * torch.linspace(0.01, 1, dim // 2)
    cos, sin = (torch.cat((f(angles), f(angles)), dim=-1).to(torch.bfloat16) for f in (torch.cos, torch.sin))
    q = qkv[:, :heads * dim].view(tokens, heads, dim).transpose(0, 1).unsqueeze(0)
    k = qkv[:, heads * dim:(heads + kv_heads) * dim].view(tokens, kv_heads, dim).transpose(0, 1).unsqueeze(0)
    expected_q, expected_k = apply_rotary_pos_emb(q, k, cos.unsqueeze(0), sin.unsqueeze(0))
    ours = cpu_kernels.rotary(qkv, heads + kv_heads, dim, cos, sin)  # q and k heads together, from the slice
    assert torch.equal(ours[:, :heads], expected_q[0].transpose(0, 1))
    assert torch.equal(ours[:, heads:], expected_k[0].transpose(0, 1))


@pytest.mark.parametrize("tokens", [1, 9])
def test_silu_mul_matches_torch_but_for_rare_last_bits(tokens):
    gate_up = bf16(tokens, 2 * 1536, seed=17, scale=4)
    gate_up[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0])  # e^x at its extremes: silu 0 (-0), x, 0, 0
    gate, up = gate_up.chunk(2, dim=-1)
    expected, ours = F.silu(gate) * up, cpu_kernels.silu_mul(gate_up)
    assert ours.shape == expected.shape and ours.dtype == torch.bfloat16
    assert torch.equal(ours[0, :4].abs(), expected[0, :4].abs())
    ulp = expected.double().abs().clamp_min(1e-30) * 2 ** -7
    assert ((ours.double() - expected.double()).abs() <= ulp).all() and (ours != expected).float().mean() < 0.01


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_argmax_is_torchs_first_maximum_with_nan_counted_largest(dtype):
    logits = bf16(5, 49152 + 7, seed=18, scale=3).to(dtype)
    logits[1, 100] = logits[1, 40000] = 50  # a tie: the first
    logits[2, 9] = logits[2, 30000] = float("nan")  # NaN wins, the first one
    logits[3] = float("-inf")  # nothing but -inf: index 0
    logits[4, -1] = 60  # in the last, partial vector
    assert cpu_kernels.argmax(logits).tolist() == logits.max(dim=-1).indices.tolist() == [
        logits[0].max(dim=-1).indices.item(), 100, 9, 0, 49152 + 6]


def test_write_kv_puts_each_token_in_its_slot_like_index_copy():
    qkv = bf16(5, (9 + 3 + 3) * 64, seed=19)  # strided rows, as the forward hands them over
    new_keys, new_values = qkv[:, 9 * 64:12 * 64].view(5, 3, 64), qkv[:, 12 * 64:].view(5, 3, 64)
    keys, values = torch.zeros(4, 16, 3, 64, dtype=torch.bfloat16), torch.zeros(4, 16, 3, 64, dtype=torch.bfloat16)
    slots = torch.tensor([0, 17, 18, 63, 40])
    cpu_kernels.write_kv(new_keys, new_values, slots, keys, values)
    expected_keys, expected_values = torch.zeros_like(keys), torch.zeros_like(values)
    expected_keys.view(64, -1).index_copy_(0, slots, new_keys.reshape(5, -1))
    expected_values.view(64, -1).index_copy_(0, slots, new_values.reshape(5, -1))
    assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)


def test_the_engine_steps_one_token_through_the_kernels_and_says_what_torch_ops_say(default_llm_bf16, monkeypatch):
    from labkit import LLM, SamplingParams

    prompts = ["The capital of France is", "def fibonacci(n):", "Water boils at"]
    greedy = SamplingParams(temperature=0, max_tokens=12)
    calls = []
    for name in ("linear", "linear_amx"):
        kernel = getattr(cpu_kernels, name)
        monkeypatch.setattr(cpu_kernels, name, lambda *args, kernel=kernel: calls.append(1) or kernel(*args))
    replies = {}
    for kernels in (True, False):
        with LLM(default_llm_bf16, cpu_kernels=kernels) as llm:
            assert llm.engine.runner.lean.kernels is kernels and llm.engine.runner.attention.kernels is kernels
            before = len(calls)
            replies[kernels] = [llm.generate(p, greedy)[0].token_ids for p in prompts]  # alone: one-token steps
            assert (len(calls) > before) is kernels
    # bfloat16 sums in another order may tip a near tie late in a reply; the start of each must agree.
    assert [r[:8] for r in replies[True]] == [r[:8] for r in replies[False]]


def test_a_torch_profile_of_a_step_shows_the_kernels_by_name():
    from torch.profiler import ProfilerActivity, profile

    weight, x = bf16(64, 64, seed=11), bf16(2, 64, seed=12)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        cpu_kernels.linear(x, weight)
        cpu_kernels.rms_norm(x, weight[0], 1e-5)
        if cpu_kernels.amx_available():
            _tiles(x, weight)
    names = {event.key for event in prof.key_averages()}
    assert {"labkit::linear", "labkit::rms_norm"} <= names, names
    assert ("labkit::linear_amx" in names) is cpu_kernels.amx_available()


@pytest.mark.parametrize("lengths", [[37], [5, 64, 100, 17], [1, 16, 17, 130, 2, 48]])
def test_decode_attention_reads_the_pages_in_place_as_closely_as_sdpa_over_a_gathered_copy(lengths):
    pages_in_pool, page_size, kv_heads, dim, heads = 40, 16, 3, 64, 9
    keys, values = bf16(pages_in_pool, page_size, kv_heads, dim, seed=13), bf16(pages_in_pool, page_size, kv_heads, dim, seed=14)
    n, most = len(lengths), -(-max(lengths) // page_size)
    generator = torch.Generator().manual_seed(15)
    table = torch.stack([torch.randperm(pages_in_pool, generator=generator)[:most] for _ in range(n)])  # padded rows
    q = bf16(n, heads + kv_heads, dim, seed=16)[:, :heads]  # strided rows, as the forward hands them over
    ours = cpu_kernels.decode_attention(q, keys, values, table, torch.tensor(lengths), dim ** -0.5)

    def gathered(pool):
        return pool.index_select(0, table.reshape(-1)).view(n, -1, kv_heads, dim).transpose(1, 2)

    hidden = torch.arange(most * page_size).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    mask = torch.zeros(hidden.shape).masked_fill_(hidden, float("-inf")).view(n, 1, 1, -1)
    exact = F.scaled_dot_product_attention(q.unsqueeze(2).double(), gathered(keys).double(), gathered(values).double(),
                                           attn_mask=mask.double(), scale=dim ** -0.5, enable_gqa=True).squeeze(2)
    sdpa = F.scaled_dot_product_attention(q.unsqueeze(2), gathered(keys), gathered(values),
                                          attn_mask=mask.to(torch.bfloat16), scale=dim ** -0.5, enable_gqa=True).squeeze(2)
    assert ours.shape == (n, heads, dim)
    assert (ours.double() - exact).abs().max() <= (sdpa.double() - exact).abs().max() * 1.01


def test_the_source_builds_for_a_cpu_without_amx(tmp_path):
    """-march=native on an AMX host would hide an AMX instruction used outside a function marked for it: the
    library must still build (and the few-row path run) on an AVX512-BF16 CPU without AMX, e.g. Cooper Lake."""
    import shutil
    import subprocess

    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc on PATH")
    source = tmp_path / "kernels.c"
    source.write_text(cpu_kernels.SOURCE)
    flags = [f for f in cpu_kernels.FLAGS if not f.startswith("-march=")]
    built = subprocess.run([compiler, *flags, "-march=cooperlake", "-Werror=implicit-function-declaration",
                            str(source), "-o", str(tmp_path / "kernels.so"), "-lm"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
