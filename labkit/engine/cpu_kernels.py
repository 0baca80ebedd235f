"""labkit's own bfloat16 CPU kernels for the lean forward, on CPUs with AVX512-BF16, compiled on first use.

Why: a decode step at batch 1 multiplies one token's activations by every weight matrix of the model, so its
time is the time to read the weights from memory, plus a few microseconds of dispatch for each of the
step's thousands of small torch ops. oneDNN's kernels, built for matrices, read the weights at about half the
bandwidth the machine gives a plain streaming read (on the 2-core Xeon this was written on: 11 GB/s against
24). `linear` streams each weight matrix once, a few rows at a time with `vdpbf16ps` (bfloat16 pairs
multiplied and summed into float32), prefetching ahead, split over the OpenMP threads torch uses (the same
libgomp, so torch's thread count and the engine's thread governor apply to it too): about 1.5x oneDNN for one
token, still ahead up to `MAX_ROWS` tokens (each weight block is read once and reused from L1 for every
token), and it adds the residual in the same pass. On a CPU with AMX tiles (Sapphire Rapids and later),
`linear_amx` serves every step size instead: the weight reordered once into 1 KB tiles (`AmxWeight`), streamed
once per 32 rows, so 1-64 tokens cost about what reading the weights costs (on a 2-core Xeon with AMX, all
the default model's weights: 10.7 ms for one token, 15.8 for 64, oneDNN 14.4 and 19.7); for a prefill's hundreds
of rows each 32x32 block is finished (bias, rounding, residual, silu) while the tile unit multiplies the next
(all the weights at 512 rows: 68 -> 48 ms, about oneDNN's 58-62). `rms_norm`, `rotary`,
`silu_mul`, `write_kv` and `argmax` do in one call what torch does in two to ten ops, with the same roundings;
`decode_attention` reads each decoding request's KV pages in place, 16 tokens at a time with an online softmax
(about 2x SDPA over a gathered copy, and as close to the exact result); `prefill_attention` does every prefill
chunk of a step in one call, 16 queries of a head against 16 cached keys at a time, through the AMX tiles where
there are some (a burst of 32 chat prompts: about 3.3x SDPA called per chunk, 1.9x with vdpbf16ps alone); `top_p_draw` draws top-k/top-p tokens for the rows it can settle from
their likeliest logits.

Results are float32 sums rounded once to bfloat16, like torch's, but summed in another order, so a value can
differ in its last bit. The source is C compiled by the system's `gcc` into `~/.cache/labkit/kernels/` (a
fraction of a second, once per source and compiler); without gcc or without AVX512-BF16 the engine keeps
torch's ops, and `unavailable_reason()` says why.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <stdlib.h>

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch does */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float from_bf16(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

/* A matmul's output element: its float32 sum, plus the bias, rounded; then plus the residual, rounded again. */
static inline uint16_t finish(float sum, const uint16_t* bias, int column, const uint16_t* residual, size_t at) {
    if (bias) sum += from_bf16(bias[column]);
    if (residual) sum = from_bf16(to_bf16(sum)) + from_bf16(residual[at]);
    return to_bf16(sum);
}

static inline __mmask16 lanes16(int left) {  /* the lanes of a 16-wide step with `left` elements to go */
    return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}
static inline __m512 widen16(const uint16_t* p, __mmask16 lanes) {  /* 16 bf16 -> 16 float */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p)), 16));
}
static inline __m512 round16(__m512 v) {  /* to bf16 and back, nearest even (vcvtneps2bf16, as torch rounds) */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

/* finish() for 16 outputs at once. */
static inline void finish16(__m512 sum, const uint16_t* bias, const uint16_t* residual, uint16_t* out, __mmask16 lanes) {
    if (bias) sum = _mm512_add_ps(sum, widen16(bias, lanes));
    if (residual) sum = _mm512_add_ps(round16(sum), widen16(residual, lanes));
    _mm256_mask_storeu_epi16(out, lanes, (__m256i)_mm512_cvtneps_pbh(sum));
}

/* e^x for 16 floats (Cephes' polynomial, within about 1 float ulp): 0 below -88.7, infinity above 88.7. */
static inline __m512 exp16(__m512 x) {
    const __mmask16 gone = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.7f), _CMP_LT_OQ);
    const __mmask16 huge = _mm512_cmp_ps_mask(x, _mm512_set1_ps(88.7f), _CMP_GT_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-88.7f)), _mm512_set1_ps(88.7f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0f));
    return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(~gone, _mm512_scalef_ps(y, n)), huge, _mm512_set1_ps(INFINITY));
}

/* bf16(silu(g)) * up for 16 bf16-exact floats, before its final rounding: F.silu(gate) * up. The sigmoid from
   e = e^-|g| (never overflows): 1 / (1 + e) for g >= 0, e / (1 + e) below; the reciprocal by one Newton step
   from vrcp14 (a division costs 4x as much, for bits bf16 drops). */
static inline __m512 silu_times16(__m512 g, __m512 up) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
    const __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), e);
    __m512 r = _mm512_rcp14_ps(d);
    r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
    const __mmask16 negative = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
    return _mm512_mul_ps(round16(_mm512_mul_ps(g, _mm512_mask_mul_ps(r, negative, r, e))), up);
}

/* out[n] = sum_k weight[n, k] * x[k] (+ bias[n]) (+ residual[n]); weight row-major [rows, cols], all bf16. */
void gemv_bf16(const uint16_t* weight, const uint16_t* x, const uint16_t* bias, const uint16_t* residual,
               uint16_t* out, int rows, int cols) {
    const int full = cols & ~31;
    const __mmask32 tail = (__mmask32)((1ull << (cols - full)) - 1);
    #pragma omp parallel for schedule(static)
    for (int block = 0; block < (rows + 7) / 8; block++) {
        const int first = block * 8, count = rows - first < 8 ? rows - first : 8;
        const uint16_t* w = weight + (size_t)first * cols;
        __m512 sum[8];
        for (int r = 0; r < 8; r++) sum[r] = _mm512_setzero_ps();
        for (int k = 0; k < full; k += 32) {
            __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
            for (int r = 0; r < count; r++) {
                _mm_prefetch((const char*)(w + (size_t)(r + 8) * cols + k), _MM_HINT_T0);
                sum[r] = _mm512_dpbf16_ps(sum[r], (__m512bh)_mm512_loadu_si512(w + (size_t)r * cols + k), xv);
            }
        }
        if (tail) {
            __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + full);
            for (int r = 0; r < count; r++)
                sum[r] = _mm512_dpbf16_ps(sum[r], (__m512bh)_mm512_maskz_loadu_epi16(tail, w + (size_t)r * cols + full), xv);
        }
        for (int r = 0; r < count; r++)
            out[first + r] = finish(_mm512_reduce_add_ps(sum[r]), bias, first + r, residual, first + r);
    }
}

/* out[m, n] = sum_k weight[n, k] * x[m, k] (+ bias[n]) (+ residual[m, n]) for a few rows of x (m < 16): four weight
   rows at a time, each read from memory once and reused from L1 for every group of four x rows. */
void gemm_few_bf16(const uint16_t* weight, const uint16_t* x, const uint16_t* bias, const uint16_t* residual,
                   uint16_t* out, int m_rows, int rows, int cols) {
    const int full = cols & ~31;
    const __mmask32 tail = (__mmask32)((1ull << (cols - full)) - 1);
    #pragma omp parallel for schedule(static)
    for (int block = 0; block < (rows + 3) / 4; block++) {
        const int first = block * 4, count = rows - first < 4 ? rows - first : 4;
        const uint16_t* w = weight + (size_t)first * cols;
        for (int m0 = 0; m0 < m_rows; m0 += 4) {
            const int ms = m_rows - m0 < 4 ? m_rows - m0 : 4;
            __m512 sum[4][4];
            for (int r = 0; r < 4; r++) for (int m = 0; m < 4; m++) sum[r][m] = _mm512_setzero_ps();
            for (int k = 0; k < cols; k += 32) {
                const __mmask32 lanes = k < full ? (__mmask32)~0u : tail;
                __m512bh xv[4], wv[4];
                for (int m = 0; m < ms; m++) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(lanes, x + (size_t)(m0 + m) * cols + k);
                for (int r = 0; r < count; r++) {
                    if (m0 == 0) _mm_prefetch((const char*)(w + (size_t)(r + 4) * cols + k), _MM_HINT_T0);
                    wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(lanes, w + (size_t)r * cols + k);
                }
                for (int r = 0; r < count; r++)
                    for (int m = 0; m < ms; m++) sum[r][m] = _mm512_dpbf16_ps(sum[r][m], wv[r], xv[m]);
            }
            for (int m = 0; m < ms; m++)
                for (int r = 0; r < count; r++) {
                    const size_t at = (size_t)(m0 + m) * rows + first + r;
                    out[at] = finish(_mm512_reduce_add_ps(sum[r][m]), bias, first + r, residual, at);
                }
        }
    }
}

/* AMX (Sapphire Rapids and later): the tile unit multiplies a 16x32 block of x by a 32x16 block of the weight
   in one instruction, so a step of up to a few dozen tokens costs what reading the weights costs. The weight is
   reordered once (amx_pack_bf16) into 1 KB tiles: for each 16 outputs n and 32 inputs k, the pairs
   (w[n][k + 2i], w[n][k + 2i + 1]) for i < 16, n < 16 -- the layout the instruction reads. */
#include <sys/syscall.h>
#include <unistd.h>
typedef struct { uint8_t palette, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } tile_config;

int amx_enable(void) {  /* Linux hands a process the tile registers only when asked (arch_prctl) */
    return (int)syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */);
}

/* packed[nb][kb][i][n][2] = weight[nb * 16 + n][kb * 32 + 2i + {0, 1}], zero beyond rows x cols. */
void amx_pack_bf16(const uint16_t* weight, uint16_t* packed, int rows, int cols) {
    const int nblocks = (rows + 15) / 16, kblocks = (cols + 31) / 32;
    #pragma omp parallel for schedule(static)
    for (int nb = 0; nb < nblocks; nb++)
        for (int kb = 0; kb < kblocks; kb++) {
            uint16_t* tile = packed + ((size_t)nb * kblocks + kb) * 512;
            for (int i = 0; i < 16; i++)
                for (int n = 0; n < 16; n++)
                    for (int j = 0; j < 2; j++) {
                        const int row = nb * 16 + n, col = kb * 32 + 2 * i + j;
                        tile[(i * 16 + n) * 2 + j] = row < rows && col < cols ? weight[(size_t)row * cols + col] : 0;
                    }
        }
}

#include <omp.h>
/* Rows [from, to) of one 32x32 block's epilogue: its float32 sums `result` [32][32] (rows m0.., outputs nb * 16..)
   finished into out as amx_linear_bf16 describes (bias, rounding, residual; or for gated, silu(gate) * up). */
static inline void amx_finish_rows(const float* result, int from, int to, int m0, int nb, const uint16_t* bias,
                                   const uint16_t* residual, uint16_t* out, int rows, int gated) {
    if (gated) {  /* blocks nb, nb + 1 are gate and up block nb / 2: out [m, rows / 2] = silu(g) * u */
        for (int m = from; m < to; m++)
            _mm256_storeu_si256((__m256i*)(out + (size_t)(m0 + m) * (rows / 2) + nb / 2 * 16), (__m256i)_mm512_cvtneps_pbh(
                silu_times16(round16(_mm512_loadu_ps(result + m * 32)), round16(_mm512_loadu_ps(result + m * 32 + 16)))));
        return;
    }
    const int ncount = rows - nb * 16 < 32 ? rows - nb * 16 : 32;
    for (int m = from; m < to; m++)
        for (int n = 0; n < ncount; n += 16) {
            const size_t at = (size_t)(m0 + m) * rows + nb * 16 + n;
            finish16(_mm512_loadu_ps(result + m * 32 + n), bias ? bias + nb * 16 + n : 0, residual ? residual + at : 0,
                     out + at, lanes16(ncount - n));
        }
}

/* One thread's share of amx_linear_bf16: its pairs [first, last) of 16-output blocks for every 32 rows of x.
   rows_outer: for each 32 rows, every pair (the 32 rows stay in L1 or L2, the weight tiles stream past them,
   loaded with the streaming hint); else for each pair, every 32 rows of a block of block_rows (the pair stays in
   L1, x streams). Each 32x32 block's epilogue runs during the next block's k steps, a few rows per step, so the
   vector units work while the tile unit multiplies; the k steps of a block are in ascending order into one
   float32 tile, as ever. */
__attribute__((target("amx-tile,amx-bf16"), always_inline))
static inline void amx_linear_part(const uint16_t* packed, const uint16_t* x, const uint16_t* xs, const uint16_t* bias,
                                   const uint16_t* residual, uint16_t* out, int m_rows, int rows, int cols, int gated,
                                   int first, int last, int block_rows, const int rows_outer) {
    const int nblocks = (rows + 15) / 16, kblocks = (cols + 31) / 32, kpad = kblocks * 32, mpad = (m_rows + 15) & ~15;
    const int in_place = cols == kpad ? m_rows & ~15 : 0;
    float result[2][32 * 32] __attribute__((aligned(64)));  /* the block just multiplied; the one being finished */
    int buffer = 0, pend_m0 = 0, pend_nb = 0, pend_count = 0, pend_done = 0;
    const int npairs = last - first;
    for (int block = 0; block < mpad; block += block_rows) {
        const int block_end = block + block_rows < mpad ? block + block_rows : mpad, nm = (block_end - block + 31) / 32;
        for (int item = 0; item < npairs * nm; item++) {
            const int pair = first + (rows_outer ? item % npairs : item / nm);
            const int m0 = block + (rows_outer ? item / npairs : item % nm) * 32;
            const int nb = pair * 2, two = nb + 1 < nblocks, second = m0 + 16 < mpad;
            const uint16_t* b0 = packed + (size_t)nb * kblocks * 512;
            const uint16_t* b1 = b0 + (size_t)kblocks * 512;
            const uint16_t* a0 = m0 < in_place ? x + (size_t)m0 * cols : xs + (size_t)(m0 - in_place) * kpad;
            const uint16_t* a1 = m0 + 16 < in_place ? x + (size_t)(m0 + 16) * cols : xs + (size_t)(m0 + 16 - in_place) * kpad;
            const int stride0 = (m0 < in_place ? cols : kpad) * 2, stride1 = (m0 + 16 < in_place ? cols : kpad) * 2;
            const float* pend = result[buffer ^ 1];
            const int step = (pend_count - pend_done + kblocks - 1) / kblocks;  /* epilogue rows per k step */
            _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
            for (int kb = 0; kb < kblocks; kb++) {
                if (rows_outer) { _tile_loadd(4, a0 + kb * 32, stride0); _tile_stream_loadd(6, b0 + (size_t)kb * 512, 64); }
                else { _tile_stream_loadd(4, a0 + kb * 32, stride0); _tile_loadd(6, b0 + (size_t)kb * 512, 64); }
                _tile_dpbf16ps(0, 4, 6);
                if (two) {
                    if (rows_outer) _tile_stream_loadd(7, b1 + (size_t)kb * 512, 64); else _tile_loadd(7, b1 + (size_t)kb * 512, 64);
                    _tile_dpbf16ps(1, 4, 7);
                }
                if (second) {
                    if (rows_outer) _tile_loadd(5, a1 + kb * 32, stride1); else _tile_stream_loadd(5, a1 + kb * 32, stride1);
                    _tile_dpbf16ps(2, 5, 6);
                    if (two) _tile_dpbf16ps(3, 5, 7);
                }
                if (pend_done < pend_count) {
                    const int to = pend_done + step < pend_count ? pend_done + step : pend_count;
                    amx_finish_rows(pend, pend_done, to, pend_m0, pend_nb, bias, residual, out, rows, gated);
                    pend_done = to;
                }
            }
            float* cur = result[buffer];
            _tile_stored(0, cur, 128); _tile_stored(1, cur + 16, 128);
            _tile_stored(2, cur + 512, 128); _tile_stored(3, cur + 512 + 16, 128);
            pend_m0 = m0; pend_nb = nb; pend_count = m_rows - m0 < 32 ? m_rows - m0 : 32; pend_done = 0;
            buffer ^= 1;
        }
    }
    if (pend_done < pend_count)
        amx_finish_rows(result[buffer ^ 1], pend_done, pend_count, pend_m0, pend_nb, bias, residual, out, rows, gated);
}

/* out[m, n] = sum_k weight[n, k] * x[m, k] (+ bias[n]) (+ residual[m, n]) with the weight packed by amx_pack_bf16.
   Each thread takes a contiguous range of pairs of 16-output blocks (amx_linear_part). When its share of the
   weight fits in L2 (AMX_WEIGHT_BYTES), it goes 32 rows at a time through all its pairs; else pair by pair
   through blocks of rows of about AMX_X_BYTES of x (a block stays in L2 while the pair's tiles stay in L1).
   x is read in place, but for its last partial 16 rows (and all of it when cols is not a multiple of 32),
   padded with zeros. */
#define AMX_WEIGHT_BYTES (1 << 20)
#define AMX_X_BYTES (600 << 10)
__attribute__((target("amx-tile,amx-bf16")))
void amx_linear_bf16(const uint16_t* packed, const uint16_t* x, const uint16_t* bias, const uint16_t* residual,
                     uint16_t* out, int m_rows, int rows, int cols, int gated) {
    const int nblocks = (rows + 15) / 16, kblocks = (cols + 31) / 32, kpad = kblocks * 32, mpad = (m_rows + 15) & ~15;
    const int in_place = cols == kpad ? m_rows & ~15 : 0;  /* rows of x read where they are */
    const int pairs = (nblocks + 1) / 2;
    uint16_t* xs = NULL;
    if (in_place < mpad) {
        xs = (uint16_t*)aligned_alloc(64, (size_t)(mpad - in_place) * kpad * 2);
        memset(xs, 0, (size_t)(mpad - in_place) * kpad * 2);
        for (int m = in_place; m < m_rows; m++) memcpy(xs + (size_t)(m - in_place) * kpad, x + (size_t)m * cols, (size_t)cols * 2);
    }
    #pragma omp parallel
    {
        tile_config config = {0};
        config.palette = 1;
        for (int t = 0; t < 8; t++) { config.rows[t] = 16; config.colsb[t] = 64; }
        _tile_loadconfig(&config);
        const int threads = omp_get_num_threads(), thread = omp_get_thread_num();
        const int first = (int)((long)pairs * thread / threads), last = (int)((long)pairs * (thread + 1) / threads);
        if (mpad > 128 && (size_t)(last - first) * kblocks * 2048 <= AMX_WEIGHT_BYTES)
            amx_linear_part(packed, x, xs, bias, residual, out, m_rows, rows, cols, gated, first, last, mpad, 1);
        else {
            const int block_rows = (AMX_X_BYTES / (kpad * 2)) & ~31;
            amx_linear_part(packed, x, xs, bias, residual, out, m_rows, rows, cols, gated, first, last,
                            block_rows > 64 ? block_rows : 64, 0);
        }
        _tile_release();
    }
    free(xs);
}

static inline __m512 load16_bf16(const uint16_t* p) { return widen16(p, (__mmask16)0xffff); }

/* The sums of each of 16 vectors, as one vector (a transposing tree of adds). */
static inline __m512 sum16x16(const __m512* v) {
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44), _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

/* Decode attention straight from the paged cache: request i's one query [heads, dim] (row stride q_stride)
   attends to its first lengths[i] cached tokens, found through pages[i * max_pages + p]; caches are
   [pages, page_size, kv_heads, dim]. 16 tokens at a time: their scores as one vector (bf16 pair products
   summed in float32), an online softmax in float32, values accumulated in float32, the output rounded once to
   bf16. dim % 16 == 0, dim <= 128, heads / kv_heads <= 8. */
void decode_attention_bf16(const uint16_t* q, int q_stride, const uint16_t* keys, const uint16_t* values,
                           const int64_t* pages, int max_pages, const int64_t* lengths, uint16_t* out,
                           int requests, int heads, int kv_heads, int dim, int page_size, float scale) {
    const int group = heads / kv_heads, vectors = dim / 16, chunks = (dim + 31) / 32;
    const __mmask32 last = dim % 32 ? (__mmask32)0xffff : (__mmask32)0xffffffff;
    /* From 8 requests on, each task takes one request's KV heads in turn (their rows share cache lines: 215
       against 255 us for 64 requests of 80 tokens); fewer requests split by head, so both cores have work. */
    const int whole = requests >= 8, tasks = whole ? requests : requests * kv_heads;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int task = 0; task < tasks; task++)
    for (int g = whole ? 0 : task % kv_heads; g < (whole ? kv_heads : task % kv_heads + 1); g++) {
        const int i = whole ? task : task / kv_heads;
        const int length = (int)lengths[i];
        __m512bh query[8][4];
        __m512 total[8][8];
        float best[8], norm[8];
        for (int h = 0; h < group; h++) {
            const uint16_t* qh = q + (size_t)i * q_stride + (g * group + h) * dim;
            for (int c = 0; c < chunks; c++)
                query[h][c] = (__m512bh)_mm512_maskz_loadu_epi16(c == chunks - 1 ? last : (__mmask32)0xffffffff, qh + c * 32);
            for (int v = 0; v < vectors; v++) total[h][v] = _mm512_setzero_ps();
            best[h] = -INFINITY;
            norm[h] = 0;
        }
        for (int t0 = 0; t0 < length; t0 += 16) {
            const int count = length - t0 < 16 ? length - t0 : 16;
            const uint16_t* krow[16];
            const uint16_t* vrow[16];
            for (int j = 0; j < count; j++) {
                const int t = t0 + j;
                const size_t at = (((size_t)pages[(size_t)i * max_pages + t / page_size] * page_size + t % page_size) * kv_heads + g) * dim;
                krow[j] = keys + at;
                vrow[j] = values + at;
            }
            float weights[8][16];
            for (int h = 0; h < group; h++) {
                __m512 dots[16];
                for (int j = 0; j < 16; j++) {
                    __m512 acc = _mm512_setzero_ps();
                    if (j < count)
                        for (int c = 0; c < chunks; c++)
                            acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_maskz_loadu_epi16(c == chunks - 1 ? last : (__mmask32)0xffffffff, krow[j] + c * 32), query[h][c]);
                    dots[j] = acc;
                }
                const __mmask16 valid = (__mmask16)((1u << count) - 1);
                const __m512 scores = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), valid,
                                                         _mm512_mul_ps(sum16x16(dots), _mm512_set1_ps(scale)));
                const float top = _mm512_reduce_max_ps(scores), now = top > best[h] ? top : best[h];
                const float shrink = best[h] == -INFINITY ? 0.0f : expf(best[h] - now);
                const __m512 p = exp16(_mm512_sub_ps(scores, _mm512_set1_ps(now)));
                norm[h] = norm[h] * shrink + _mm512_reduce_add_ps(p);
                best[h] = now;
                for (int v = 0; v < vectors; v++) total[h][v] = _mm512_mul_ps(total[h][v], _mm512_set1_ps(shrink));
                _mm512_storeu_ps(weights[h], p);
            }
            for (int j = 0; j < count; j++) {
                __m512 vv[8];
                for (int v = 0; v < vectors; v++) vv[v] = load16_bf16(vrow[j] + v * 16);
                for (int h = 0; h < group; h++) {
                    const __m512 w = _mm512_set1_ps(weights[h][j]);
                    for (int v = 0; v < vectors; v++) total[h][v] = _mm512_fmadd_ps(w, vv[v], total[h][v]);
                }
            }
        }
        for (int h = 0; h < group; h++) {
            uint16_t* o = out + ((size_t)i * heads + g * group + h) * dim;
            const __m512 inverse = _mm512_set1_ps(1.0f / norm[h]);
            for (int v = 0; v < vectors; v++)
                _mm256_storeu_si256((__m256i*)(o + v * 16), (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(total[h][v], inverse)));
        }
    }
}

/* Prefill attention straight from the paged cache, for every chunk of a step in one call. Chunk c is
   chunks[c] = (its first row in q and out, its tokens, its context length, its first entry in `slots`): its
   context's cache slots are slots[first ..], the chunk's own tokens last (written before attention runs), and
   query t, at position context - tokens + t, attends causally to slots 0 .. that position. Each task is one
   query head's tile of up to 16 queries, so a burst of short prompts still splits over the threads. Scores are
   kept transposed (a vector holds one key's score for the 16 queries): an online softmax per lane, no
   horizontal reductions; probabilities rounded to bf16 before they weigh the values and summed in float32
   before (as SDPA does), the output scaled by 1 / sum and rounded once. dim % 32 == 0, dim <= 128. */
#define PREFILL_TILE 16
typedef struct {
    uint32_t queries[64][PREFILL_TILE] __attribute__((aligned(64)));  /* [dimension pair][query] */
    uint32_t keys[16][64] __attribute__((aligned(64)));              /* [key][dimension pair] */
    uint32_t value_pairs[8][128] __attribute__((aligned(64)));       /* [key pair][dimension]: (v[2i][d], v[2i+1][d]) */
    float total[128][PREFILL_TILE] __attribute__((aligned(64)));      /* the AVX path's output, [dimension][query] */
    float rows[PREFILL_TILE][128] __attribute__((aligned(64)));       /* the AMX path's output, [query][dimension] */
    float scratch[16][16] __attribute__((aligned(64)));
    uint16_t weights[16][16] __attribute__((aligned(64)));           /* the AMX path's probabilities, [query][key] */
} prefill_tile_state;

static inline void transpose16(__m512i r[16]) {  /* r[a] element b -> r[b] element a, 32-bit elements */
    __m512i t[16], u[16];
    for (int k = 0; k < 8; k++) {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    for (int k = 0; k < 4; k++) {
        u[4 * k] = _mm512_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm512_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm512_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm512_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i x = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), y = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
        const __m512i x1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD), y1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_i32x4(x, y, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(x1, y1, 0x88);
        r[8 + c] = _mm512_shuffle_i32x4(x, y, 0xDD);
        r[12 + c] = _mm512_shuffle_i32x4(x1, y1, 0xDD);
    }
}

/* The tile's queries as dimension pairs: queries[i][m] = (q[m][2i], q[m][2i + 1]), zeros past `count`. */
static inline void prefill_queries(prefill_tile_state* s, const uint16_t* q, int q_stride, int row, int count, int dim) {
    for (int i0 = 0; i0 < dim / 2; i0 += 16) {
        __m512i r[16];
        for (int m = 0; m < 16; m++)
            r[m] = m < count ? _mm512_loadu_si512(q + (size_t)(row + m) * q_stride + 2 * i0) : _mm512_setzero_si512();
        transpose16(r);
        for (int i = 0; i < 16; i++) _mm512_store_si512(s->queries[i0 + i], r[i]);
    }
}

/* Keys k0 .. k0 + kcount - 1 of KV head `kv` side by side, and their values as pairs of rows; zeros past kcount. */
static inline void prefill_block(prefill_tile_state* s, const uint16_t* keys, const uint16_t* values,
                                 const int64_t* context_slots, int k0, int kcount, int kv, int kv_heads, int dim) {
    const __m512i pair_up = _mm512_setr_epi32(0x200000, 0x210001, 0x220002, 0x230003, 0x240004, 0x250005, 0x260006,
                                              0x270007, 0x280008, 0x290009, 0x2a000a, 0x2b000b, 0x2c000c, 0x2d000d,
                                              0x2e000e, 0x2f000f);  /* 16-bit lanes a[0], b[0], a[1], b[1], ... */
    const __m512i upper = _mm512_add_epi16(pair_up, _mm512_set1_epi16(16));  /* the same from a[16], b[16] */
    for (int j = 0; j < 16; j += 2) {
        const uint16_t* k[2];
        const uint16_t* v[2];
        for (int r = 0; r < 2; r++) {
            const size_t at = j + r < kcount ? ((size_t)context_slots[k0 + j + r] * kv_heads + kv) * dim : 0;
            k[r] = j + r < kcount ? keys + at : 0;
            v[r] = j + r < kcount ? values + at : 0;
        }
        for (int d = 0; d < dim; d += 32) {
            __m512i b[2];
            for (int r = 0; r < 2; r++) {
                _mm512_store_si512(s->keys[j + r] + d / 2, k[r] ? _mm512_loadu_si512(k[r] + d) : _mm512_setzero_si512());
                b[r] = v[r] ? _mm512_loadu_si512(v[r] + d) : _mm512_setzero_si512();
            }
            _mm512_store_si512(s->value_pairs[j / 2] + d, _mm512_permutex2var_epi16(b[0], pair_up, b[1]));
            _mm512_store_si512(s->value_pairs[j / 2] + d + 16, _mm512_permutex2var_epi16(b[0], upper, b[1]));
        }
    }
}

/* The online softmax over one block of transposed scores: masks what each query may not see, scales, and
   turns scores[j] into e^(score - running max); returns the factor earlier sums shrink by. */
static inline __m512 prefill_softmax(__m512 scores[16], int k0, int first_position, float scale, __m512* best, __m512* norm) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 top = *best;
    for (int j = 0; j < 16; j++) {  /* key k0 + j is seen by the queries at or after its position */
        const __mmask16 sees = _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32(k0 + j - first_position));
        scores[j] = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), sees, _mm512_mul_ps(scores[j], _mm512_set1_ps(scale)));
        top = _mm512_max_ps(top, scores[j]);
    }
    const __m512 shrink = exp16(_mm512_sub_ps(*best, top));  /* 0 for the first block (best = -inf) */
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < 16; j++) {
        scores[j] = exp16(_mm512_sub_ps(scores[j], top));
        sum = _mm512_add_ps(sum, scores[j]);
    }
    *best = top;
    *norm = _mm512_fmadd_ps(*norm, shrink, sum);
    return shrink;
}

typedef struct { int chunk, head, t0; } prefill_task;

static prefill_task* prefill_tasks(const int64_t* chunks, int num_chunks, int heads, int* count) {
    int tasks = 0;
    for (int c = 0; c < num_chunks; c++) tasks += heads * (int)((chunks[c * 4 + 1] + PREFILL_TILE - 1) / PREFILL_TILE);
    prefill_task* list = (prefill_task*)malloc(sizeof(prefill_task) * (tasks ? tasks : 1));
    for (int c = 0, t = 0; c < num_chunks; c++)
        for (int h = 0; h < heads; h++)
            for (int t0 = 0; t0 < chunks[c * 4 + 1]; t0 += PREFILL_TILE, t++) list[t] = (prefill_task){c, h, t0};
    *count = tasks;
    return list;
}

/* One task with vdpbf16ps: scores as the queries' dimension pairs times one key's pair broadcast, the values
   weighed the same way, the output kept as [dimension][query]. */
static void prefill_tile(prefill_tile_state* s, const uint16_t* q, int q_stride, const uint16_t* keys, const uint16_t* values,
                         const int64_t* slots, const int64_t* chunk, uint16_t* out, int head, int t0,
                         int heads, int kv_heads, int dim, float scale) {
    const int first_row = (int)chunk[0] + t0, tokens = (int)chunk[1], context = (int)chunk[2];
    const int count = tokens - t0 < PREFILL_TILE ? tokens - t0 : PREFILL_TILE;
    const int first_position = context - tokens + t0, last_position = first_position + count - 1;
    const int kv = head / (heads / kv_heads);
    prefill_queries(s, q + head * dim, q_stride, first_row, count, dim);
    memset(s->total, 0, sizeof(float) * dim * PREFILL_TILE);
    __m512 best = _mm512_set1_ps(-INFINITY), norm = _mm512_setzero_ps();
    const __m512i pair_up = _mm512_setr_epi32(0x100000, 0x110001, 0x120002, 0x130003, 0x140004, 0x150005, 0x160006,
                                              0x170007, 0x180008, 0x190009, 0x1a000a, 0x1b000b, 0x1c000c, 0x1d000d,
                                              0x1e000e, 0x1f000f);  /* 16-bit lanes 0, 16, 1, 17, ... */
    for (int k0 = 0; k0 <= last_position; k0 += 16) {
        prefill_block(s, keys, values, slots + chunk[3], k0, last_position + 1 - k0 < 16 ? last_position + 1 - k0 : 16,
                      kv, kv_heads, dim);
        __m512 scores[16];
        for (int j = 0; j < 16; j++) scores[j] = _mm512_setzero_ps();
        for (int i = 0; i < dim / 2; i++) {
            const __m512bh query = (__m512bh)_mm512_load_si512(s->queries[i]);
            for (int j = 0; j < 16; j++)
                scores[j] = _mm512_dpbf16_ps(scores[j], query, (__m512bh)_mm512_set1_epi32(s->keys[j][i]));
        }
        const __m512 shrink = prefill_softmax(scores, k0, first_position, scale, &best, &norm);
        __m512bh weights[8];  /* lane m: (p[2i][m], p[2i + 1][m]) */
        for (int i = 0; i < 8; i++)
            weights[i] = (__m512bh)_mm512_permutexvar_epi16(pair_up, (__m512i)_mm512_cvtne2ps_pbh(scores[2 * i + 1], scores[2 * i]));
        for (int d0 = 0; d0 < dim; d0 += 16) {
            __m512 o[16];
            for (int d = 0; d < 16; d++) o[d] = _mm512_mul_ps(_mm512_load_ps(s->total[d0 + d]), shrink);
            for (int i = 0; i < 8; i++)
                for (int d = 0; d < 16; d++)
                    o[d] = _mm512_dpbf16_ps(o[d], weights[i], (__m512bh)_mm512_set1_epi32(s->value_pairs[i][d0 + d]));
            for (int d = 0; d < 16; d++) _mm512_store_ps(s->total[d0 + d], o[d]);
        }
    }
    const __m512 inverse = _mm512_div_ps(_mm512_set1_ps(1.0f), norm);
    for (int d0 = 0; d0 < dim; d0 += 16) {
        __m512i r[16];
        for (int d = 0; d < 16; d++) r[d] = _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(s->total[d0 + d]), inverse));
        transpose16(r);
        for (int m = 0; m < count; m++)
            _mm256_storeu_si256((__m256i*)(out + ((size_t)(first_row + m) * heads + head) * dim + d0),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_castsi512_ps(r[m])));
    }
}

void prefill_attention_bf16(const uint16_t* q, int q_stride, const uint16_t* keys, const uint16_t* values,
                            const int64_t* slots, const int64_t* chunks, int num_chunks, uint16_t* out,
                            int heads, int kv_heads, int dim, float scale) {
    int tasks;
    prefill_task* list = prefill_tasks(chunks, num_chunks, heads, &tasks);
    #pragma omp parallel
    {
        prefill_tile_state* state = (prefill_tile_state*)aligned_alloc(64, sizeof(prefill_tile_state));
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tasks; t++)
            prefill_tile(state, q, q_stride, keys, values, slots, chunks + list[t].chunk * 4, out, list[t].head,
                         list[t].t0, heads, kv_heads, dim, scale);
        free(state);
    }
    free(list);
}

/* The same task through the AMX tiles: the scores' tile is keys x queries (keys, 16 rows of 32 dimensions, times
   the queries as dimension pairs), the output's is queries x 16 dimensions (the probabilities, transposed to
   rows of 16 keys, times the values as pairs of rows), added into [query][dimension] rows in float32. Tiles:
   0 queries, 2 scores, 3 keys, 4 probabilities, 5 values, 6 output. */
__attribute__((target("amx-tile,amx-bf16")))
static void amx_prefill_tile(prefill_tile_state* s, const uint16_t* q, int q_stride, const uint16_t* keys,
                             const uint16_t* values, const int64_t* slots, const int64_t* chunk, uint16_t* out,
                             int head, int t0, int heads, int kv_heads, int dim, float scale) {
    const int first_row = (int)chunk[0] + t0, tokens = (int)chunk[1], context = (int)chunk[2];
    const int count = tokens - t0 < PREFILL_TILE ? tokens - t0 : PREFILL_TILE;
    const int first_position = context - tokens + t0, last_position = first_position + count - 1;
    const int kv = head / (heads / kv_heads);
    prefill_queries(s, q + head * dim, q_stride, first_row, count, dim);
    memset(s->rows, 0, sizeof(s->rows));
    __m512 best = _mm512_set1_ps(-INFINITY), norm = _mm512_setzero_ps();
    for (int k0 = 0; k0 <= last_position; k0 += 16) {
        prefill_block(s, keys, values, slots + chunk[3], k0, last_position + 1 - k0 < 16 ? last_position + 1 - k0 : 16,
                      kv, kv_heads, dim);
        _tile_zero(2);
        for (int i0 = 0; i0 < dim / 2; i0 += 16) {
            _tile_loadd(3, s->keys[0] + i0, 256);
            _tile_loadd(0, s->queries[i0], 64);
            _tile_dpbf16ps(2, 3, 0);
        }
        _tile_stored(2, s->scratch, 64);
        __m512i p[16];
        __m512 scores[16];
        for (int j = 0; j < 16; j++) scores[j] = _mm512_load_ps(s->scratch[j]);
        const __m512 shrink = prefill_softmax(scores, k0, first_position, scale, &best, &norm);
        for (int j = 0; j < 16; j++) p[j] = _mm512_castps_si512(scores[j]);
        transpose16(p);  /* p[m]: query m's probabilities over the 16 keys */
        for (int m = 0; m < 16; m += 2)
            _mm512_store_si512(s->weights[m], (__m512i)_mm512_cvtne2ps_pbh(_mm512_castsi512_ps(p[m + 1]), _mm512_castsi512_ps(p[m])));
        float shrinks[16];
        _mm512_storeu_ps(shrinks, shrink);
        _tile_loadd(4, s->weights, 32);
        for (int d0 = 0; d0 < dim; d0 += 16) {
            _tile_zero(6);
            _tile_loadd(5, s->value_pairs[0] + d0, 512);
            _tile_dpbf16ps(6, 4, 5);
            _tile_stored(6, s->scratch, 64);
            for (int m = 0; m < 16; m++)
                _mm512_store_ps(s->rows[m] + d0, _mm512_fmadd_ps(_mm512_load_ps(s->rows[m] + d0), _mm512_set1_ps(shrinks[m]),
                                                                _mm512_load_ps(s->scratch[m])));
        }
    }
    float inverse[16];
    _mm512_storeu_ps(inverse, _mm512_div_ps(_mm512_set1_ps(1.0f), norm));
    for (int m = 0; m < count; m++)
        for (int d = 0; d < dim; d += 16)
            _mm256_storeu_si256((__m256i*)(out + ((size_t)(first_row + m) * heads + head) * dim + d),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_load_ps(s->rows[m] + d), _mm512_set1_ps(inverse[m]))));
}

__attribute__((target("amx-tile,amx-bf16")))
void amx_prefill_attention_bf16(const uint16_t* q, int q_stride, const uint16_t* keys, const uint16_t* values,
                                const int64_t* slots, const int64_t* chunks, int num_chunks, uint16_t* out,
                                int heads, int kv_heads, int dim, float scale) {
    int tasks;
    prefill_task* list = prefill_tasks(chunks, num_chunks, heads, &tasks);
    #pragma omp parallel
    {
        tile_config config = {0};
        config.palette = 1;
        const int rows[7] = {16, 0, 16, 16, 16, 8, 16}, bytes[7] = {64, 0, 64, 64, 32, 64, 64};
        for (int t = 0; t < 7; t++) { config.rows[t] = rows[t]; config.colsb[t] = bytes[t]; }
        _tile_loadconfig(&config);
        prefill_tile_state* state = (prefill_tile_state*)aligned_alloc(64, sizeof(prefill_tile_state));
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < tasks; t++)
            amx_prefill_tile(state, q, q_stride, keys, values, slots, chunks + list[t].chunk * 4, out, list[t].head,
                             list[t].t0, heads, kv_heads, dim, scale);
        free(state);
        _tile_release();
    }
    free(list);
}

/* out = weight * bf16(x * rsqrt(mean(x^2) + eps)), per row: transformers' LlamaRMSNorm, with its roundings. */
void rms_norm_bf16(const uint16_t* x, const uint16_t* weight, float eps, uint16_t* out, int rows, int cols) {
    #pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++) {
        const uint16_t* row = x + (size_t)r * cols;
        __m512 squares = _mm512_setzero_ps();
        for (int c = 0; c < cols; c += 16) {
            const __mmask16 lanes = lanes16(cols - c);
            const __m512 v = widen16(row + c, lanes);
            squares = _mm512_fmadd_ps(v, v, squares);
        }
        const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / cols + eps));
        for (int c = 0; c < cols; c += 16) {
            const __mmask16 lanes = lanes16(cols - c);
            const __m512 normed = round16(_mm512_mul_ps(widen16(row + c, lanes), scale));
            _mm256_mask_storeu_epi16(out + (size_t)r * cols + c, lanes,
                                     (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(widen16(weight + c, lanes), normed)));
        }
    }
}

/* Rotary embeddings of `heads` heads of each token (row stride `stride` elements), into out [tokens, heads, dim]:
   x * cos + cat(-x2, x1) * sin with cos, sin [tokens, dim], each product and the sum rounded to bf16.
   dim % 32 == 0 (16 lanes per half). */
void rotary_bf16(const uint16_t* x, int stride, const uint16_t* cos, const uint16_t* sin, uint16_t* out,
                 int tokens, int heads, int dim) {
    const int half = dim / 2;
    const __mmask16 all = (__mmask16)0xffff;
    #pragma omp parallel for schedule(static) if (tokens > 16)
    for (int t = 0; t < tokens; t++) {
        const uint16_t* c = cos + (size_t)t * dim;
        const uint16_t* s = sin + (size_t)t * dim;
        for (int h = 0; h < heads; h++) {
            const uint16_t* v = x + (size_t)t * stride + h * dim;
            uint16_t* o = out + ((size_t)t * heads + h) * dim;
            for (int i = 0; i < half; i += 16) {
                const __m512 first = widen16(v + i, all), second = widen16(v + half + i, all);
                const __m512 low = _mm512_add_ps(round16(_mm512_mul_ps(first, widen16(c + i, all))),
                                                 round16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), second), widen16(s + i, all))));
                const __m512 high = _mm512_add_ps(round16(_mm512_mul_ps(second, widen16(c + half + i, all))),
                                                  round16(_mm512_mul_ps(first, widen16(s + half + i, all))));
                _mm256_storeu_si256((__m256i*)(o + i), (__m256i)_mm512_cvtneps_pbh(low));
                _mm256_storeu_si256((__m256i*)(o + half + i), (__m256i)_mm512_cvtneps_pbh(high));
            }
        }
    }
}

/* Each token's new keys and values [tokens, kv_heads * dim] (rows `key_stride` / `value_stride` apart) into their
   cache slots: row slots[t] of the caches viewed as [slots, kv_heads * dim]. */
void write_kv_bf16(const uint16_t* keys, int key_stride, const uint16_t* values, int value_stride, const int64_t* slots,
                   uint16_t* key_cache, uint16_t* value_cache, int tokens, int width) {
    for (int t = 0; t < tokens; t++) {
        memcpy(key_cache + (size_t)slots[t] * width, keys + (size_t)t * key_stride, (size_t)width * 2);
        memcpy(value_cache + (size_t)slots[t] * width, values + (size_t)t * value_stride, (size_t)width * 2);
    }
}

/* One token per row of float32 logits [rows, vocab] under top-k (0: off) and top-p (>= 1: off), by inverse CDF
   from uniforms[r], over the kept tokens in descending order of probability. The kept tokens are a prefix of
   that order, so only the likeliest need sorting: a histogram of the logits within TOP_P_SPAN of the maximum,
   in buckets of 1/TOP_P_BUCKETS, finds the highest bucket edge above which the tokens hold top_p of the
   probability (and number at least top_k); only those are sorted. A row is settled (settled[r] = 1) when that
   edge exists and at most TOP_P_MOST tokens lie above it, or when it keeps the whole vocabulary. Other rows
   (very flat ones, a large top_k, NaN, nothing above -inf) are left for the exact path. */
#define TOP_P_SPAN 16
#define TOP_P_BUCKETS 4  /* per unit of logit */
#define TOP_P_MOST 2048
typedef struct { float logit; int id; } candidate;
static int likelier(const void* a, const void* b) {
    const candidate *x = (const candidate*)a, *y = (const candidate*)b;
    if (x->logit != y->logit) return x->logit < y->logit ? 1 : -1;
    return x->id - y->id;
}
void top_p_draw(const float* logits, const int64_t* top_k, const float* top_p, const float* uniforms,
                int64_t* tokens, int8_t* settled, int rows, int vocab) {
    #pragma omp parallel for schedule(dynamic, 1)
    for (int r = 0; r < rows; r++) {
        const float* row = logits + (size_t)r * vocab;
        settled[r] = 0;
        __m512 most = _mm512_set1_ps(-INFINITY);
        int nan = 0;
        for (int c = 0; c < vocab; c += 16) {
            const __mmask16 lanes = lanes16(vocab - c);
            const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes, row + c);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0;
            most = _mm512_max_ps(most, v);
        }
        const float top = _mm512_reduce_max_ps(most);
        if (nan || top == -INFINITY) continue;
        const int k = top_k[r] >= vocab ? 0 : (int)top_k[r];  /* keeping every token is no top-k */
        const float floor = top - TOP_P_SPAN;
        float bucket_mass[TOP_P_SPAN * TOP_P_BUCKETS + 1] = {0};
        int bucket_count[TOP_P_SPAN * TOP_P_BUCKETS + 1] = {0};
        const __m512 shift = _mm512_set1_ps(top);
        __m512 total = _mm512_setzero_ps();
        for (int c = 0; c < vocab; c += 16) {
            const __mmask16 lanes = lanes16(vocab - c);
            const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes, row + c);
            const __m512 e = exp16(_mm512_sub_ps(v, shift));
            total = _mm512_add_ps(total, e);
            __mmask16 near = _mm512_cmp_ps_mask(v, _mm512_set1_ps(floor), _CMP_GE_OQ);
            if (near) {
                float values[16], weights[16];
                _mm512_storeu_ps(values, v);
                _mm512_storeu_ps(weights, e);
                for (; near; near &= near - 1) {
                    const int j = __builtin_ctz(near), b = (int)((top - values[j]) * TOP_P_BUCKETS);
                    bucket_mass[b] += weights[j];
                    bucket_count[b]++;
                }
            }
        }
        const float mass = _mm512_reduce_add_ps(total);  /* sum of e^(logit - top) over the row */
        if (k <= 0 && top_p[r] >= 1.0f) {  /* the whole vocabulary, in vocabulary order, as the exact path draws it */
            const float target = uniforms[r] * mass;
            float seen = 0.0f;
            int chosen = -1;
            for (int c = 0; c < vocab && chosen < 0; c += 16) {
                const __mmask16 lanes = lanes16(vocab - c);
                float weights[16];
                _mm512_storeu_ps(weights, exp16(_mm512_sub_ps(_mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), lanes, row + c), shift)));
                const float block = _mm512_reduce_add_ps(_mm512_loadu_ps(weights));
                if (seen + block <= target) { seen += block; continue; }
                for (int j = 0; j < 16 && c + j < vocab; j++) {
                    seen += weights[j];
                    if (seen > target && weights[j] > 0) { chosen = c + j; break; }
                }
            }
            if (chosen >= 0) { tokens[r] = chosen; settled[r] = 1; }
            continue;
        }
        /* the highest bucket edge above which the tokens suffice (a little slack for float sums in another order) */
        int edge = -1, above = 0;
        float held_above = 0.0f;
        for (int b = 0; b <= TOP_P_SPAN * TOP_P_BUCKETS; b++) {
            held_above += bucket_mass[b];
            above += bucket_count[b];
            if (k > 0 ? above >= k : held_above / mass >= top_p[r] * 1.0001f) { edge = b; break; }
        }
        if (edge < 0 || above > TOP_P_MOST) continue;
        const float bar = top - (float)(edge + 1) / TOP_P_BUCKETS;  /* every token of buckets 0..edge is above it */
        candidate kept[TOP_P_MOST];
        int count = 0;
        for (int c = 0; c < vocab; c++)
            if (row[c] > bar && count < TOP_P_MOST && (int)((top - row[c]) * TOP_P_BUCKETS) <= edge) {
                kept[count].logit = row[c]; kept[count].id = c; count++;
            }
        qsort(kept, count, sizeof(candidate), likelier);
        float probs[TOP_P_MOST];
        const int n = k > 0 && k < count ? k : count;
        float sum = 0.0f;
        for (int i = 0; i < n; i++) { probs[i] = expf(kept[i].logit - top) / mass; sum += probs[i]; }
        if (k > 0) for (int i = 0; i < n; i++) probs[i] /= sum;  /* renormalized over what top-k kept */
        float before = 0.0f;
        int keep = 0;
        for (int i = 0; i < n; i++) {  /* a token stays while the likelier ones hold less than top_p */
            if (i > 0 && before >= top_p[r]) break;
            before += probs[i];
            keep = i + 1;
        }
        if (k <= 0 && before < top_p[r] && keep == n) continue;  /* float sums fell short: the exact path decides */
        float target = uniforms[r] * before, running = 0.0f;
        if (target >= before) target = nextafterf(before, 0.0f);
        int chosen = keep - 1;
        for (int i = 0; i < keep; i++) {
            running += probs[i];
            if (running > target) { chosen = i; break; }
        }
        tokens[r] = kept[chosen].id;
        settled[r] = 1;
    }
}

/* Each row's first largest entry, NaN counted as largest (what torch's max(dim).indices gives); bf16 or float32 rows. */
void argmax_rows(const void* logits, int is_bf16, int64_t* out, int rows, int cols) {
    #pragma omp parallel for schedule(static) if (rows > 1)
    for (int r = 0; r < rows; r++) {
        __m512 best = _mm512_set1_ps(-INFINITY);
        __m512i where = _mm512_setzero_si512();
        const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        int64_t nan_at = -1;
        for (int c = 0; c < cols; c += 16) {
            const __mmask16 lanes = lanes16(cols - c);
            const __m512 v = is_bf16 ? widen16((const uint16_t*)logits + (size_t)r * cols + c, lanes)
                                     : _mm512_maskz_loadu_ps(lanes, (const float*)logits + (size_t)r * cols + c);
            const __mmask16 nan = _mm512_mask_cmp_ps_mask(lanes, v, v, _CMP_UNORD_Q);
            if (nan) { nan_at = c + __builtin_ctz(nan); break; }
            const __mmask16 above = _mm512_mask_cmp_ps_mask(lanes, v, best, _CMP_GT_OQ);
            best = _mm512_mask_mov_ps(best, above, v);
            where = _mm512_mask_mov_epi32(where, above, _mm512_add_epi32(lane, _mm512_set1_epi32(c)));
        }
        if (nan_at >= 0) { out[r] = nan_at; continue; }
        const float top = _mm512_reduce_max_ps(best);
        const __mmask16 tops = _mm512_cmp_ps_mask(best, _mm512_set1_ps(top), _CMP_EQ_OQ);
        out[r] = tops ? _mm512_mask_reduce_min_epi32(tops, where) : 0;  /* every entry -inf: index 0, as torch */
    }
}

/* out[t, i] = bf16(silu(gate[t, i])) * up[t, i], rounded, where gate_up[t] = [gate | up], each `inner` wide:
   F.silu(gate) * up, with the rounding after each of the two. */
void silu_mul_bf16(const uint16_t* gate_up, uint16_t* out, int tokens, int inner) {
    #pragma omp parallel for schedule(static) if (tokens > 4)
    for (int t = 0; t < tokens; t++)
        for (int i = 0; i < inner; i += 16) {
            const __mmask16 lanes = lanes16(inner - i);
            const __m512 g = widen16(gate_up + (size_t)t * 2 * inner + i, lanes);
            const __m512 up = widen16(gate_up + (size_t)t * 2 * inner + inner + i, lanes);
            _mm256_mask_storeu_epi16(out + (size_t)t * inner + i, lanes, (__m256i)_mm512_cvtneps_pbh(silu_times16(g, up)));
        }
}
"""
MAX_ROWS = 8  # up to here streaming the weights once beats oneDNN's blocked matmul (measured: 1.1-1.6x at 1-8 rows, even at 16)
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as info:
            return next((set(line.split(":", 1)[1].split()) for line in info if line.startswith("flags")), set())
    except OSError:
        return set()


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "labkit" / "kernels"


@functools.lru_cache(maxsize=None)
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library, or why not): compiled once per process at most."""
    flags = _cpu_flags()
    if "avx512_bf16" not in flags:
        return None, "this CPU lacks AVX512-BF16"
    compiler = shutil.which(os.environ.get("CC", "gcc"))
    if compiler is None:
        return None, "no C compiler (gcc) on PATH"
    # -march=native: a library built on one CPU may not run on another that shares this cache (a network home).
    digest = hashlib.sha256((SOURCE + " ".join(FLAGS) + compiler + " ".join(sorted(flags))).encode()).hexdigest()[:16]
    target = _cache_dir() / f"bf16-{digest}.so"
    if not target.exists():
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory() as work:
                source, built = Path(work) / "kernels.c", Path(work) / "kernels.so"
                source.write_text(SOURCE)
                subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"], check=True,
                               capture_output=True, text=True, timeout=120)
                os.replace(built, target)  # atomic: a concurrent process sees the whole library or none
        except (OSError, subprocess.SubprocessError) as failure:
            detail = getattr(failure, "stderr", "") or str(failure)
            return None, f"compiling the kernel failed: {detail.strip().splitlines()[-1] if detail.strip() else failure}"
    try:
        library = ctypes.CDLL(str(target))
    except OSError as failure:
        return None, f"loading the kernel failed: {failure}"
    pointer, number = ctypes.c_void_p, ctypes.c_int
    signatures = {"gemv_bf16": [pointer] * 5 + [number] * 2,
                  "gemm_few_bf16": [pointer] * 5 + [number] * 3,
                  "amx_pack_bf16": [pointer, pointer, number, number],
                  "amx_linear_bf16": [pointer] * 5 + [number] * 4,
                  "decode_attention_bf16": [pointer, number, pointer, pointer, pointer, number, pointer, pointer,
                                            number, number, number, number, number, ctypes.c_float],
                  "prefill_attention_bf16": [pointer, number, pointer, pointer, pointer, pointer, number, pointer,
                                             number, number, number, ctypes.c_float],
                  "amx_prefill_attention_bf16": [pointer, number, pointer, pointer, pointer, pointer, number, pointer,
                                                 number, number, number, ctypes.c_float],
                  "rms_norm_bf16": [pointer, pointer, ctypes.c_float, pointer, number, number],
                  "rotary_bf16": [pointer, number, pointer, pointer, pointer, number, number, number],
                  "silu_mul_bf16": [pointer, pointer, number, number],
                  "write_kv_bf16": [pointer, number, pointer, number, pointer, pointer, pointer, number, number],
                  "argmax_rows": [pointer, number, pointer, number, number],
                  "top_p_draw": [pointer] * 6 + [number] * 2}
    for name, arguments in signatures.items():
        getattr(library, name).argtypes = arguments
        getattr(library, name).restype = None
    library.amx_enable.restype = ctypes.c_int
    return library, None


@functools.lru_cache(maxsize=None)
def amx_available() -> bool:
    """Whether `linear_amx` runs here: a CPU with AMX tiles for bf16, and a kernel that lends them to this process."""
    library = _library()[0]
    return library is not None and {"amx_tile", "amx_bf16"} <= _cpu_flags() and library.amx_enable() == 0


def unavailable_reason() -> str | None:
    """None when the kernels run here; else why the engine keeps torch's ops."""
    return _library()[1]


def _shown_in_profiles(kernel):
    """torch's profiler sees only torch ops; a kernel called through ctypes is recorded as `labkit::<name>` while a
    profiler runs (so a profile of a step still counts its matmuls), at no cost otherwise."""
    label = f"labkit::{kernel.__name__}"

    @functools.wraps(kernel)
    def call(*args, **kwargs):
        if not torch.autograd._profiler_enabled():
            return kernel(*args, **kwargs)
        with torch.profiler.record_function(label):
            return kernel(*args, **kwargs)
    return call


@_shown_in_profiles
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)` (+ `residual`) for at most `MAX_ROWS` bfloat16 rows `x` [rows, cols]; weight
    contiguous [out, cols]. With `residual` the product is rounded to bfloat16 before the addition, as two
    torch ops would round it."""
    library = _library()[0]
    x = x.contiguous()
    rows, (out_features, cols) = x.shape[0], weight.shape
    out = torch.empty((rows, out_features), dtype=torch.bfloat16)
    pointers = (weight.data_ptr(), x.data_ptr(), 0 if bias is None else bias.data_ptr(),
                0 if residual is None else residual.contiguous().data_ptr(), out.data_ptr())
    if rows == 1:
        library.gemv_bf16(*pointers, out_features, cols)
    else:
        library.gemm_few_bf16(*pointers, rows, out_features, cols)
    return out


class AmxWeight:
    """A bfloat16 weight [out, cols] reordered once into AMX tiles for `linear_amx` (the same bytes, padded).

    `gated`: the weight is [gate; up] (an MLP's two projections stacked, each `out / 2` rows, a multiple of 16),
    and `linear_amx` returns silu(x @ gate.T) * (x @ up.T) [rows, out / 2] in the same pass, with the roundings
    of three torch ops (the products, F.silu, the multiplication): the tiles interleave gate and up blocks so
    each thread holds a gate block beside its up block."""

    def __init__(self, weight: torch.Tensor, gated: bool = False):
        assert weight.dtype == torch.bfloat16 and weight.dim() == 2
        self.gated = gated
        if gated:
            inner = weight.shape[0] // 2
            assert weight.shape[0] == 2 * inner and inner % 16 == 0, "gated: [gate; up] with a multiple of 16 rows each"
            weight = weight.reshape(2, inner // 16, 16, weight.shape[1]).transpose(0, 1).reshape(weight.shape)
        self.out_features, self.in_features = weight.shape
        blocks = -(-self.out_features // 16) * -(-self.in_features // 32)
        self.tiles = torch.empty(blocks * 512, dtype=torch.bfloat16)
        _library()[0].amx_pack_bf16(weight.contiguous().data_ptr(), self.tiles.data_ptr(), self.out_features,
                                    self.in_features)


@_shown_in_profiles
def linear_amx(x: torch.Tensor, weight: AmxWeight, bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """`linear` for any number of rows, through the AMX tile unit, with the weight from `AmxWeight` (for a gated
    one: silu(gate) * up, no bias or residual)."""
    assert not (weight.gated and (bias is not None or residual is not None))
    x = x.contiguous()
    width = weight.out_features // 2 if weight.gated else weight.out_features
    out = torch.empty((x.shape[0], width), dtype=torch.bfloat16)
    _library()[0].amx_linear_bf16(weight.tiles.data_ptr(), x.data_ptr(), 0 if bias is None else bias.data_ptr(),
                                  0 if residual is None else residual.contiguous().data_ptr(), out.data_ptr(),
                                  x.shape[0], weight.out_features, weight.in_features, int(weight.gated))
    return out


@_shown_in_profiles
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm over the rows of bfloat16 `x` [rows, cols], in one call."""
    x = x.contiguous()
    out = torch.empty_like(x)
    _library()[0].rms_norm_bf16(x.data_ptr(), weight.data_ptr(), eps, out.data_ptr(), x.shape[0], x.shape[1])
    return out


@_shown_in_profiles
def rotary(x: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embeddings of the first `heads` heads of each row of `x` [tokens, >= heads * head_dim] (a slice of
    a wider row is fine), with cos and sin contiguous [tokens, head_dim] (or [tokens, 1, head_dim]): a new
    [tokens, heads, head_dim] tensor. `head_dim` a multiple of 32 (`rotary_fits`)."""
    assert x.stride(1) == 1 and cos.is_contiguous() and sin.is_contiguous() and rotary_fits(head_dim)
    out = x.new_empty((x.shape[0], heads, head_dim))
    _library()[0].rotary_bf16(x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), out.data_ptr(),
                              x.shape[0], heads, head_dim)
    return out


def rotary_fits(head_dim: int) -> bool:
    """Whether `rotary` takes heads of this size: each half in whole 16-float vectors."""
    return head_dim % 32 == 0


@_shown_in_profiles
def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` for bfloat16 rows `gate_up` [tokens, 2 * inner] holding [gate | up], in one call."""
    gate_up = gate_up.contiguous()
    tokens, inner = gate_up.shape[0], gate_up.shape[1] // 2
    out = gate_up.new_empty((tokens, inner))
    _library()[0].silu_mul_bf16(gate_up.data_ptr(), out.data_ptr(), tokens, inner)
    return out


@_shown_in_profiles
def write_kv(new_keys: torch.Tensor, new_values: torch.Tensor, slots: torch.Tensor, keys: torch.Tensor,
             values: torch.Tensor) -> None:
    """`keys.view(slots, -1).index_copy_(0, slots, new_keys)` and the same for values, in one call: new keys and
    values [tokens, kv_heads, dim] (rows may be strided), the caches [pages, page_size, kv_heads, dim]."""
    tokens, kv_heads, dim = new_keys.shape
    for new in (new_keys, new_values):
        assert new.dtype == keys.dtype == torch.bfloat16 and new.stride(2) == 1 and new.stride(1) == dim
    assert keys.is_contiguous() and values.is_contiguous() and slots.dtype == torch.int64 and slots.is_contiguous()
    _library()[0].write_kv_bf16(new_keys.data_ptr(), new_keys.stride(0), new_values.data_ptr(), new_values.stride(0),
                                slots.data_ptr(), keys.data_ptr(), values.data_ptr(), tokens, kv_heads * dim)


@_shown_in_profiles
def argmax(logits: torch.Tensor) -> torch.Tensor:
    """`logits.max(dim=-1).indices` for bfloat16 or float32 rows [rows, vocab]: each row's first largest entry,
    NaN counted as largest."""
    assert logits.dtype in (torch.bfloat16, torch.float32) and logits.dim() == 2
    logits = logits.contiguous()
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    _library()[0].argmax_rows(logits.data_ptr(), int(logits.dtype == torch.bfloat16), out.data_ptr(), *logits.shape)
    return out


@_shown_in_profiles
def top_p_draw(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
               uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`top_k_top_p.draw` for the rows it settles from their likeliest tokens: float32 logits [rows, vocab] (after
    temperature), top_k [rows] (0: off), top_p [rows], uniforms [rows]. Returns the tokens and which rows were
    settled; the others (flat rows, more than 2,048 tokens above the edge that settles them, NaN, nothing above
    -inf) are left to the exact path."""
    rows, vocab = logits.shape
    logits = logits.contiguous().float()
    top_k, top_p = top_k.to(torch.int64).contiguous(), top_p.to(torch.float32).contiguous()
    uniforms = uniforms.to(torch.float32).contiguous()
    tokens, settled = torch.zeros(rows, dtype=torch.int64), torch.zeros(rows, dtype=torch.int8)
    _library()[0].top_p_draw(logits.data_ptr(), top_k.data_ptr(), top_p.data_ptr(), uniforms.data_ptr(),
                             tokens.data_ptr(), settled.data_ptr(), rows, vocab)
    return tokens, settled.bool()


def decode_attention_fits(head_dim: int, query_heads_per_kv_head: int) -> bool:
    """Whether `decode_attention` takes a model of these shapes: its registers hold at most 8 query heads per KV
    head and 128 dimensions per head, in whole 16-float vectors."""
    return head_dim % 16 == 0 and head_dim <= 128 and query_heads_per_kv_head <= 8


@_shown_in_profiles
def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, pages: torch.Tensor,
                     lengths: torch.Tensor, scale: float) -> torch.Tensor:
    """Each request's one query q [requests, heads, dim] (rows may be strided) over its first `lengths[i]` cached
    tokens, found through `pages` [requests, max pages] in the caches [pages, page_size, kv_heads, dim], read in
    place: no gathered copy, no mask. Returns [requests, heads, dim]."""
    requests, heads, dim = q.shape
    assert q.stride(2) == 1 and q.stride(1) == dim and keys.is_contiguous() and values.is_contiguous()
    pages, lengths = pages.contiguous(), lengths.contiguous()
    out = q.new_empty((requests, heads, dim))
    _library()[0].decode_attention_bf16(q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(),
                                        pages.data_ptr(), pages.shape[1], lengths.data_ptr(), out.data_ptr(),
                                        requests, heads, keys.shape[2], dim, keys.shape[1], scale)
    return out


def prefill_attention_fits(head_dim: int) -> bool:
    """Whether `prefill_attention` takes heads of this size: whole 32-dimension pieces, at most 128 (its tile's
    buffers are sized for that)."""
    return head_dim % 32 == 0 and head_dim <= 128


@_shown_in_profiles
def prefill_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor,
                      chunks: torch.Tensor, out: torch.Tensor, scale: float, amx: bool | None = None) -> None:
    """Every prefill chunk of a step, causal, in one call, into its rows of `out` [tokens, heads, dim]
    (contiguous; other rows untouched). q [tokens, heads, dim] (rows may be strided); chunks int64 [n, 4]: each
    chunk's first row, its tokens, its context length (its own tokens included, last) and where its context's
    cache slots start in `slots` (int64, page * page_size + offset, already written); the caches [pages,
    page_size, kv_heads, dim]. `amx`: through the AMX tiles (None: where `amx_available()`), else vdpbf16ps."""
    tokens, heads, dim = q.shape
    assert q.stride(2) == 1 and q.stride(1) == dim and prefill_attention_fits(dim)
    assert keys.is_contiguous() and values.is_contiguous() and out.is_contiguous() and out.shape == q.shape
    assert slots.dtype == chunks.dtype == torch.int64 and chunks.shape[1:] == (4,)
    slots, chunks = slots.contiguous(), chunks.contiguous()
    library = _library()[0]
    kernel = library.amx_prefill_attention_bf16 if (amx_available() if amx is None else amx) else library.prefill_attention_bf16
    kernel(q.data_ptr(), q.stride(0), keys.data_ptr(), values.data_ptr(), slots.data_ptr(), chunks.data_ptr(),
           chunks.shape[0], out.data_ptr(), heads, keys.shape[2], dim, scale)
