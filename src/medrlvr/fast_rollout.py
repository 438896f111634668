"""A fast rollout engine for Llama-family policies (SmolLM2, Llama, Qwen2) on CPU.

``FastEngine`` (registered as ``"fast"``) runs its own compact forward pass over the weights of the
live policy module (a plain ``transformers`` model or a peft LoRA wrapper: the active adapters' deltas
are merged into the snapshot). At the start of every :meth:`FastEngine.generate` call the weights are
copied (and cast: ``dtype="bf16"`` by default) into persistent buffers, so the engine always samples
from the current policy and there is no separate weight-sync step.

What makes it fast, compared with transformers ``generate`` (see ``bench/rollout_throughput.py``):

* each prompt is prefilled ONCE and its key/value cache is shared by the ``n`` samples of its group:
  the decode attention over the prompt is one product per group and KV head, the ``n * G`` queries of
  the group against one copy of the prompt keys ("cascade" attention); a prompt that starts like one
  already cached (the shared prompt template) copies that prefix's K/V instead of recomputing it;
* a static, pre-allocated KV cache (a prompt part per group slot, a generated part per row);
* bf16 weights (fused QKV and gate/up projections) packed once per call for the kernels below;
* small C++ kernels (AVX512-BF16 dot products, OpenMP; built on first use with the system ``g++``
  and cached under ``$MEDRLVR_CACHE/kernels``): a GEMM for the projections and the LM head (float32
  logits), RoPE + cache write + attention in one call per layer (decode and prefill), residual add +
  RMSNorm, SiLU-gate, and sampling (one softmax / inverse-CDF pass per row that also gives the
  log-prob). Per-row arithmetic does not depend on the batch: greedy outputs do not depend on batching.
  Without a compiler or without AVX512-BF16 the engine runs the same algorithm with PyTorch ops
  (slower, still correct); ``MEDRLVR_FAST_KERNELS=0`` forces that path;
* continuous batching: only unfinished rows are computed; a prompt group is admitted into a free slot
  whenever ``batch_size`` rows allow, so new prompts start while the stragglers of others finish;
* the kernel threads are tuned while generating (all torch threads vs one, by measured time per row):
  on a busy machine the fork/join barriers of a thread pool can cost more than a second core gains;
* stop strings are checked incrementally (a short decoded tail, only when the new token could end
  one); the log-prob of each sampled token under ``logits / temperature`` (float32, not modified by
  top-k / top-p) comes from the single logits row of the step: no per-position full-vocab tensors.

``dtype="fp32"`` is the reference path (PyTorch ops, float32, same arithmetic as transformers): greedy
decoding gives the tokens of ``generate``. With ``temperature == 0`` the returned log-probs are those
of ``log_softmax(logits)`` (temperature 1).

Post-processing (EOS / stop-string truncation, finish reason) is :func:`medrlvr.rollout.finish`, shared
with the ``hf`` engine, so both return identical structures.

Unsupported architectures (anything but ``llama`` / ``qwen2`` with a SiLU MLP and a static RoPE)
raise :class:`UnsupportedModelError` (a ``ValueError``); callers fall back to the ``hf`` engine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import torch
import torch.nn.functional as F

from .rollout import Completion, SamplingParams, eos_token_ids, finish, register_engine

SUPPORTED_MODEL_TYPES = ("llama", "qwen2")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}


class UnsupportedModelError(ValueError):
    """The model is not one the fast engine can run; use the ``hf`` engine instead."""


# ------------------------------------------------------------------------------------------ kernels
_CSRC = r"""
// medrlvr fast_rollout CPU kernels (bf16 storage, fp32 math). Built on first use with g++ -O3 -march=native.
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <math.h>
#include <omp.h>

typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

static inline vf splat(float s) { return vf{} + s; }
static inline vf ldf(const float* p) { vf v; memcpy(&v, p, 64); return v; }
static inline void stf(float* p, vf v) { memcpy(p, &v, 64); }
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf ldh(const uint16_t* p) {
    __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
    return (vf)u;
}
#else
static inline vf ldh(const uint16_t* p) { vh h; memcpy(&h, p, 32); vu u = __builtin_convertvector(h, vu) << 16; return (vf)u; }
#endif
static inline void sth(uint16_t* p, vf f) {
    vu u = (vu)f; u = u + 0x7fffu + ((u >> 16) & 1u);
    vh h = __builtin_convertvector(u >> 16, vh); memcpy(p, &h, 32);
}
static inline float b2f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f2b(float f) { uint32_t u; memcpy(&u, &f, 4); u = u + 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16); }
static inline float hsum(vf v) { float s = 0; for (int i = 0; i < 16; i++) s += v[i]; return s; }
static inline float hmax(vf v) { float s = v[0]; for (int i = 1; i < 16; i++) s = v[i] > s ? v[i] : s; return s; }

static inline vf vexp(vf x) {
    x = x < -87.0f ? splat(-87.0f) : x;
    x = x > 88.0f ? splat(88.0f) : x;
    vf t = x * 1.44269504088896341f;
    vf n = __builtin_convertvector(__builtin_convertvector(t + (t >= 0.0f ? splat(0.5f) : splat(-0.5f)), vi), vf);
    vf r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    vf p = splat(1.0f / 5040.0f);
    p = p * r + (1.0f / 720.0f); p = p * r + (1.0f / 120.0f); p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f); p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    vi e = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)e;
}
static inline float sexp(float x) { vf v = splat(x); return vexp(v)[0]; }

// softmax pieces over a row of scores [0, len): returns max; exps written in place and their sum added.
static inline float row_max(const float* s, int len, float m) {
    int i = 0; vf vm = splat(m);
    for (; i + 16 <= len; i += 16) { vf x = ldf(s + i); vm = x > vm ? x : vm; }
    m = hmax(vm);
    for (; i < len; i++) m = s[i] > m ? s[i] : m;
    return m;
}
static inline float row_exp(float* s, int len, float m) {
    int i = 0; vf acc = splat(0.0f);
    for (; i + 16 <= len; i += 16) { vf e = vexp(ldf(s + i) - m); stf(s + i, e); acc += e; }
    float sum = hsum(acc);
    for (; i < len; i++) { float e = sexp(s[i] - m); s[i] = e; sum += e; }
    return sum;
}

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#define FR_HAVE_BF16 1
// ---- bf16 dot-product attention (AVX512-BF16). Cache layouts ("VNNI" pairs):
//   K^T: [hd/2][len][2]   (pairs of head dims, per key)     V: [len/2][hd][2]   (pairs of keys, per head dim)
struct Attn2Args {
    const uint16_t* qkv; int64_t qkv_stride;
    uint16_t* out; int64_t out_stride;
    uint16_t* kp; uint16_t* vp; uint16_t* kg; uint16_t* vg;
    const float* cos; const float* sin;
    const int64_t* pos; const int64_t* t; const int64_t* plen;   // pos, t: per (compact) row; plen: per slot
    const int64_t* slots; const int64_t* start; const int64_t* rj;  // active slots; their rows; cache row of each
    int S, n, H, Hk, Pmax, M; float scale;                          // S: number of active slots
};

// sc[i][p] = q_i . k_p for 4 queries (bf16 pairs Q2, row stride HD/2 uint32), keys [0, len) rounded up to 32.
// K2: keys in blocks of 32: [len/32][HD/2][32][2] (a block is 64 * HD contiguous bf16).
template <int HD>
static inline void qk4_bf(const uint32_t* Q2, const uint16_t* K2, int len, float* sc, int64_t scs) {
    constexpr int H2 = HD / 2;
    for (int p0 = 0; p0 < len; p0 += 32) {
        const uint16_t* kb = K2 + (int64_t)(p0 >> 5) * H2 * 64;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (int i = 0; i < H2; i++) {
            const uint16_t* kr = kb + i * 64;
            __m512bh kv = (__m512bh)_mm512_loadu_si512(kr), kw = (__m512bh)_mm512_loadu_si512(kr + 32);
            __m512bh q0 = (__m512bh)_mm512_set1_epi32(Q2[i]), q1 = (__m512bh)_mm512_set1_epi32(Q2[H2 + i]);
            __m512bh q2 = (__m512bh)_mm512_set1_epi32(Q2[2 * H2 + i]), q3 = (__m512bh)_mm512_set1_epi32(Q2[3 * H2 + i]);
            a0 = _mm512_dpbf16_ps(a0, q0, kv); a1 = _mm512_dpbf16_ps(a1, q1, kv);
            a2 = _mm512_dpbf16_ps(a2, q2, kv); a3 = _mm512_dpbf16_ps(a3, q3, kv);
            b0 = _mm512_dpbf16_ps(b0, q0, kw); b1 = _mm512_dpbf16_ps(b1, q1, kw);
            b2 = _mm512_dpbf16_ps(b2, q2, kw); b3 = _mm512_dpbf16_ps(b3, q3, kw);
        }
        _mm512_storeu_ps(sc + p0, a0); _mm512_storeu_ps(sc + scs + p0, a1);
        _mm512_storeu_ps(sc + 2 * scs + p0, a2); _mm512_storeu_ps(sc + 3 * scs + p0, a3);
        _mm512_storeu_ps(sc + p0 + 16, b0); _mm512_storeu_ps(sc + scs + p0 + 16, b1);
        _mm512_storeu_ps(sc + 2 * scs + p0 + 16, b2); _mm512_storeu_ps(sc + 3 * scs + p0 + 16, b3);
    }
}

// O[i][:] += sum_p P_i[p] V[p][:] for QB queries; P2: bf16 probabilities as pairs (row stride ps uint32);
// V2: [len/2][HD][2]; npairs = ceil(len / 2) (the odd tail's partner probability is zero)
template <int HD, int QB>
static inline void pv_bf(const uint32_t* P2, int64_t ps, const uint16_t* V2, int npairs, float* O) {
    constexpr int NV = HD / 16;
    __m512 acc[QB][NV];
    for (int i = 0; i < QB; i++) for (int k = 0; k < NV; k++) acc[i][k] = _mm512_loadu_ps(O + i * HD + 16 * k);
    for (int p = 0; p < npairs; p++) {
        __m512bh vr[NV];
        for (int k = 0; k < NV; k++) vr[k] = (__m512bh)_mm512_loadu_si512(V2 + ((int64_t)p * HD + 16 * k) * 2);
        for (int i = 0; i < QB; i++) {
            __m512bh w = (__m512bh)_mm512_set1_epi32(P2[i * ps + p]);
            for (int k = 0; k < NV; k++) acc[i][k] = _mm512_dpbf16_ps(acc[i][k], w, vr[k]);
        }
    }
    for (int i = 0; i < QB; i++) for (int k = 0; k < NV; k++) _mm512_storeu_ps(O + i * HD + 16 * k, acc[i][k]);
}

template <int HD>
static inline void pv_bf_n(int qb, const uint32_t* P2, int64_t ps, const uint16_t* V2, int npairs, float* O) {
    int q = 0;
    if (HD > 64) {
        for (; q + 2 <= qb; q += 2) pv_bf<HD, 2>(P2 + q * ps, ps, V2, npairs, O + q * HD);
        if (q < qb) pv_bf<HD, 1>(P2 + q * ps, ps, V2, npairs, O + q * HD);
        return;
    }
    for (; q + 4 <= qb; q += 4) pv_bf<HD, 4>(P2 + q * ps, ps, V2, npairs, O + q * HD);
    switch (qb - q) {
        case 3: pv_bf<HD, 3>(P2 + q * ps, ps, V2, npairs, O + q * HD); break;
        case 2: pv_bf<HD, 2>(P2 + q * ps, ps, V2, npairs, O + q * HD); break;
        case 1: pv_bf<HD, 1>(P2 + q * ps, ps, V2, npairs, O + q * HD); break;
        default: break;
    }
}


// offset of (key p, head dim d) in a blocked key cache [P/32][HD/2][32][2]
static inline int64_t kidx(int p, int d, int HD) { return ((int64_t)(p >> 5) * (HD / 2) + (d >> 1)) * 64 + (p & 31) * 2 + (d & 1); }

// ---- GEMM for small/medium M: out[m][n] = sum_k x[m][k] W[n][k] (+ bias[n]).
// x: bf16 (M, K), row stride xs (even); W packed as [ceil(N/32)][K/2][32][2] bf16; out bf16 or fp32.
template <int MT>
static inline void gemm_tile(const uint32_t* x2, int64_t xs2, const uint16_t* Wb, int K2, const float* bias, void* out,
                             int64_t os, int out_f32, int n0, int N) {
    __m512 a0[MT], a1[MT];
    for (int i = 0; i < MT; i++) { a0[i] = _mm512_setzero_ps(); a1[i] = _mm512_setzero_ps(); }
    for (int kp = 0; kp < K2; kp++) {
        const uint16_t* w = Wb + (int64_t)kp * 64;
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(w), b1 = (__m512bh)_mm512_loadu_si512(w + 32);
#pragma GCC unroll 16
        for (int i = 0; i < MT; i++) {
            __m512bh a = (__m512bh)_mm512_set1_epi32(x2[i * xs2 + kp]);
            a0[i] = _mm512_dpbf16_ps(a0[i], a, b0);
            a1[i] = _mm512_dpbf16_ps(a1[i], a, b1);
        }
    }
    __m512 bz0 = _mm512_setzero_ps(), bz1 = bz0;
    const int nv = N - n0 < 32 ? N - n0 : 32;
    if (bias) {
        float tb[32] = {0};
        memcpy(tb, bias + n0, 4 * nv);
        bz0 = _mm512_loadu_ps(tb); bz1 = _mm512_loadu_ps(tb + 16);
    }
    for (int i = 0; i < MT; i++) {
        __m512 v0 = _mm512_add_ps(a0[i], bz0), v1 = _mm512_add_ps(a1[i], bz1);
        if (out_f32) {
            float* o = (float*)out + i * os + n0;
            if (nv == 32) { _mm512_storeu_ps(o, v0); _mm512_storeu_ps(o + 16, v1); }
            else { float tmp[32]; _mm512_storeu_ps(tmp, v0); _mm512_storeu_ps(tmp + 16, v1); memcpy(o, tmp, 4 * nv); }
        } else {
            uint16_t* o = (uint16_t*)out + i * os + n0;
            __m512bh h = _mm512_cvtne2ps_pbh(v1, v0);
            if (nv == 32) _mm512_storeu_si512(o, (__m512i)h);
            else { uint16_t tmp[32]; _mm512_storeu_si512(tmp, (__m512i)h); memcpy(o, tmp, 2 * nv); }
        }
    }
}

#define FR_MT 14
typedef void (*gemm_tile_fn)(const uint32_t*, int64_t, const uint16_t*, int, const float*, void*, int64_t, int, int, int);
static const gemm_tile_fn gemm_tiles[FR_MT + 1] = {
    nullptr, gemm_tile<1>, gemm_tile<2>, gemm_tile<3>, gemm_tile<4>, gemm_tile<5>, gemm_tile<6>, gemm_tile<7>,
    gemm_tile<8>, gemm_tile<9>, gemm_tile<10>, gemm_tile<11>, gemm_tile<12>, gemm_tile<13>, gemm_tile<14>};

// exps (fp32, in place) -> bf16 into pb[0, len) with pb[len] = 0 when len is odd
static inline void to_bf16_row(const float* s, int len, uint16_t* pb) {
    int i = 0;
    for (; i + 32 <= len; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + i + 16), _mm512_loadu_ps(s + i));
        _mm512_storeu_si512(pb + i, (__m512i)v);
    }
    for (; i < len; i++) pb[i] = f2b(s[i]);
    if (len & 1) pb[len] = 0;
}

template <int HD>
static void attn2_t(const Attn2Args& a, int nthreads) {
    constexpr int H2 = HD / 2;
    const int G = a.H / a.Hk, n = a.n, nqp = (n * G + 3) / 4 * 4 + 4;
    const int Pm = a.Pmax, M = a.M, SC = Pm + M, half = HD / 2;
#pragma omp parallel num_threads(nthreads)
    {
        uint32_t* Q2 = (uint32_t*)aligned_alloc(64, sizeof(uint32_t) * nqp * H2);
        float* O = (float*)aligned_alloc(64, sizeof(float) * nqp * HD);
        float* sc = (float*)aligned_alloc(64, sizeof(float) * (size_t)nqp * SC);
        uint16_t* pb = (uint16_t*)aligned_alloc(64, sizeof(uint16_t) * (size_t)nqp * SC);
        float* inv = (float*)malloc(sizeof(float) * nqp);
        memset(Q2, 0, sizeof(uint32_t) * nqp * H2);
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < a.S * a.Hk; item++) {
            const int si = item / a.Hk, h = item % a.Hk;
            const int s = (int)a.slots[si], r0 = (int)a.start[si], na = (int)a.start[si + 1] - r0, nq = na * G;
            const int64_t sh = (int64_t)s * a.Hk + h;
            const uint16_t* kp = a.kp + sh * HD * Pm;
            const uint16_t* vp = a.vp + sh * Pm * HD;
            const int Ps = (int)a.plen[s];
            for (int jj = 0; jj < na; jj++) {
                const int r = r0 + jj, j = (int)a.rj[r]; const int64_t p = a.pos[r]; const int tt = (int)a.t[r];
                const float* c = a.cos + p * HD; const float* sn = a.sin + p * HD;
                const uint16_t* row = a.qkv + r * a.qkv_stride;
                uint16_t* kg = a.kg + (sh * n + j) * HD * M;
                uint16_t* vg = a.vg + (sh * n + j) * M * HD;
                const uint16_t* k = row + (a.H + h) * HD; const uint16_t* v = row + (a.H + a.Hk + h) * HD;
                for (int d = 0; d < HD; d++) {
                    float kr = d < half ? -b2f(k[d + half]) : b2f(k[d - half]);
                    kg[kidx(tt, d, HD)] = f2b(b2f(k[d]) * c[d] + kr * sn[d]);
                    vg[((int64_t)(tt >> 1) * HD + d) * 2 + (tt & 1)] = v[d];
                }
                if (!(tt & 1)) for (int d = 0; d < HD; d++) vg[((int64_t)(tt >> 1) * HD + d) * 2 + 1] = 0;
                for (int g = 0; g < G; g++) {
                    const uint16_t* q = row + (h * G + g) * HD;
                    uint16_t* qo = (uint16_t*)(Q2 + (jj * G + g) * H2);
                    for (int d = 0; d < HD; d++) {
                        float qr = d < half ? -b2f(q[d + half]) : b2f(q[d - half]);
                        qo[d] = f2b((b2f(q[d]) * c[d] + qr * sn[d]) * a.scale);
                    }
                }
            }
            // prompt part: the na*G queries of the slot against its shared prompt keys
            for (int c0 = 0; c0 < Ps; c0 += 64) {   // 64-key chunks stay in L1 across the query blocks
                const int cl = Ps - c0 < 64 ? Ps - c0 : 64;
                for (int q0 = 0; q0 < nq; q0 += 4)
                    qk4_bf<HD>(Q2 + q0 * H2, kp + (int64_t)(c0 >> 5) * H2 * 64, cl, sc + (int64_t)q0 * SC + c0, SC);
            }
            // generated part: each row's G queries against its own keys (blocks of 4 queries may spill into
            // the next row's score rows, which that row then overwrites)
            for (int jj = 0; jj < na; jj++) {
                const int r = r0 + jj, tt = (int)a.t[r];
                const uint16_t* kg = a.kg + (sh * n + a.rj[r]) * HD * M;
                for (int g0 = 0; g0 < G; g0 += 4)
                    qk4_bf<HD>(Q2 + (jj * G + g0) * H2, kg, tt + 1, sc + (int64_t)(jj * G + g0) * SC + Pm, SC);
            }
            for (int q = 0; q < nq; q++) {
                const int tt = (int)a.t[r0 + q / G];
                float* row = sc + (int64_t)q * SC;
                float m = row_max(row, Ps, -INFINITY); m = row_max(row + Pm, tt + 1, m);
                float sum = row_exp(row, Ps, m) + row_exp(row + Pm, tt + 1, m);
                inv[q] = 1.0f / sum;
                to_bf16_row(row, Ps, pb + (int64_t)q * SC);
                to_bf16_row(row + Pm, tt + 1, pb + (int64_t)q * SC + Pm);
            }
            memset(O, 0, sizeof(float) * nqp * HD);
            for (int c0 = 0; c0 < (Ps + 1) / 2; c0 += 32) {   // 64-key chunks of V
                const int cl = (Ps + 1) / 2 - c0 < 32 ? (Ps + 1) / 2 - c0 : 32;
                pv_bf_n<HD>(nq, (const uint32_t*)pb + c0, SC / 2, vp + (int64_t)c0 * HD * 2, cl, O);
            }
            for (int jj = 0; jj < na; jj++) {
                const int r = r0 + jj, tt = (int)a.t[r];
                const uint16_t* vg = a.vg + (sh * n + a.rj[r]) * M * HD;
                pv_bf_n<HD>(G, (const uint32_t*)(pb + (int64_t)(jj * G) * SC + Pm), SC / 2, vg, (tt + 2) / 2, O + jj * G * HD);
            }
            for (int jj = 0; jj < na; jj++) {
                uint16_t* orow = a.out + (int64_t)(r0 + jj) * a.out_stride;
                for (int g = 0; g < G; g++) {
                    const int q = jj * G + g; const float iv = inv[q];
                    for (int d = 0; d < HD; d += 16) sth(orow + (h * G + g) * HD + d, ldf(O + q * HD + d) * iv);
                }
            }
        }
        free(Q2); free(O); free(sc); free(pb); free(inv);
    }
}

// ---- prefill attention: Pn new prompt positions p0..p0+Pn-1 of one slot. Phase 1 applies RoPE to the new
// keys and writes keys/values into the slot's (VNNI) prompt cache; phase 2 runs causal attention of the
// new queries over keys [0, position] read from that cache.
template <int HD>
static void attn_prefill_t(const uint16_t* qkv, int64_t qkv_stride, uint16_t* out, int64_t out_stride,
                           uint16_t* kp, uint16_t* vp, const float* cos, const float* sin, int p0, int Pn,
                           int H, int Hk, int Pm, float scale, int nthreads) {
    constexpr int H2 = HD / 2, half = HD / 2;
    const int G = H / Hk, nq = Pn * G, nblk = (nq + 3) / 4;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static)
        for (int item = 0; item < Pn * Hk; item++) {
            const int i = item / Hk, h = item % Hk, p = p0 + i;
            const float* c = cos + (int64_t)p * HD; const float* sn = sin + (int64_t)p * HD;
            const uint16_t* row = qkv + (int64_t)i * qkv_stride;
            const uint16_t* k = row + (H + h) * HD; const uint16_t* v = row + (H + Hk + h) * HD;
            uint16_t* kph = kp + (int64_t)h * HD * Pm; uint16_t* vph = vp + (int64_t)h * Pm * HD;
            for (int d = 0; d < HD; d++) {
                float kr = d < half ? -b2f(k[d + half]) : b2f(k[d - half]);
                kph[kidx(p, d, HD)] = f2b(b2f(k[d]) * c[d] + kr * sn[d]);
                vph[((int64_t)(p >> 1) * HD + d) * 2 + (p & 1)] = v[d];
            }
            if (!(p & 1) && i == Pn - 1) for (int d = 0; d < HD; d++) vph[((int64_t)(p >> 1) * HD + d) * 2 + 1] = 0;
        }
        // (implicit barrier)
        uint32_t* Q2 = (uint32_t*)aligned_alloc(64, sizeof(uint32_t) * 4 * H2);
        float* sc = (float*)aligned_alloc(64, sizeof(float) * 4 * (size_t)Pm);
        uint16_t* pb = (uint16_t*)aligned_alloc(64, sizeof(uint16_t) * 4 * (size_t)Pm);
        float O[4 * HD];
#pragma omp for schedule(dynamic, 1)
        for (int item = 0; item < Hk * nblk; item++) {
            const int h = item % Hk, b = item / Hk;
            const int q0 = b * 4, nb = nq - q0 < 4 ? nq - q0 : 4;
            int len[4];
            for (int j = 0; j < 4; j++) {
                const int qi = q0 + (j < nb ? j : nb - 1), i = qi / G, g = qi % G, p = p0 + i;
                len[j] = p + 1;
                const float* c = cos + (int64_t)p * HD; const float* sn = sin + (int64_t)p * HD;
                const uint16_t* q = qkv + (int64_t)i * qkv_stride + (h * G + g) * HD;
                uint16_t* qo = (uint16_t*)(Q2 + j * H2);
                for (int d = 0; d < HD; d++) {
                    float qr = d < half ? -b2f(q[d + half]) : b2f(q[d - half]);
                    qo[d] = f2b((b2f(q[d]) * c[d] + qr * sn[d]) * scale);
                }
            }
            const int maxlen = len[3] > len[0] ? len[3] : len[0];
            const uint16_t* kph = kp + (int64_t)h * HD * Pm; const uint16_t* vph = vp + (int64_t)h * Pm * HD;
            for (int c0 = 0; c0 < maxlen; c0 += 64) {
                const int cl = maxlen - c0 < 64 ? maxlen - c0 : 64;
                qk4_bf<HD>(Q2, kph + (int64_t)(c0 >> 5) * H2 * 64, cl, sc + c0, Pm);
            }
            const int npairs = (maxlen + 1) / 2;
            float inv[4];
            for (int j = 0; j < 4; j++) {
                float* r = sc + (int64_t)j * Pm;
                float m = row_max(r, len[j], -INFINITY);
                inv[j] = 1.0f / row_exp(r, len[j], m);
                uint16_t* pr = pb + (int64_t)j * Pm;
                to_bf16_row(r, len[j], pr);
                for (int x = len[j]; x < 2 * npairs; x++) pr[x] = 0;
            }
            memset(O, 0, sizeof(O));
            pv_bf_n<HD>(4, (const uint32_t*)pb, Pm / 2, vph, npairs, O);
            for (int j = 0; j < nb; j++) {
                const int qi = q0 + j, i = qi / G, g = qi % G;
                uint16_t* orow = out + (int64_t)i * out_stride + (h * G + g) * HD;
                for (int d = 0; d < HD; d += 16) sth(orow + d, ldf(O + j * HD + d) * inv[j]);
            }
        }
        free(Q2); free(sc); free(pb);
    }
}
#endif

extern "C" {

int fr_version() { return 1; }

int fr_has_bf16() {
#ifdef FR_HAVE_BF16
    return 1;
#else
    return 0;
#endif
}

int fr_attn_decode_bf16(const uint16_t* qkv, int64_t qkv_stride, uint16_t* out, int64_t out_stride,
                        uint16_t* kp, uint16_t* vp, uint16_t* kg, uint16_t* vg, const float* cos, const float* sin,
                        const int64_t* pos, const int64_t* t, const int64_t* plen, const int64_t* slots,
                        const int64_t* start, const int64_t* rj,
                        int S, int n, int H, int Hk, int hd, int Pmax, int M, float scale, int nthreads) {
#ifdef FR_HAVE_BF16
    Attn2Args a{qkv, qkv_stride, out, out_stride, kp, vp, kg, vg, cos, sin, pos, t, plen, slots, start, rj,
                S, n, H, Hk, Pmax, M, scale};
    if (Pmax % 32 || M % 32) return -2;
    switch (hd) {
        case 64: attn2_t<64>(a, nthreads); return 0;
        case 128: attn2_t<128>(a, nthreads); return 0;
        case 32: attn2_t<32>(a, nthreads); return 0;
        default: return -1;
    }
#else
    return -3;
#endif
}

int fr_attn_prefill_bf16(const uint16_t* qkv, int64_t qkv_stride, uint16_t* out, int64_t out_stride, uint16_t* kp,
                         uint16_t* vp, const float* cos, const float* sin, int p0, int Pn, int H, int Hk, int hd,
                         int Pmax, float scale, int nthreads) {
#ifdef FR_HAVE_BF16
    if (Pmax % 32) return -2;
    switch (hd) {
        case 64: attn_prefill_t<64>(qkv, qkv_stride, out, out_stride, kp, vp, cos, sin, p0, Pn, H, Hk, Pmax, scale, nthreads); return 0;
        case 128: attn_prefill_t<128>(qkv, qkv_stride, out, out_stride, kp, vp, cos, sin, p0, Pn, H, Hk, Pmax, scale, nthreads); return 0;
        case 32: attn_prefill_t<32>(qkv, qkv_stride, out, out_stride, kp, vp, cos, sin, p0, Pn, H, Hk, Pmax, scale, nthreads); return 0;
        default: return -1;
    }
#else
    return -3;
#endif
}

// out = x @ W^T (+ bias); see gemm_tile. Returns 0, or -3 without AVX512-BF16.
int fr_linear(const uint16_t* x, int64_t xs, int M, int K, const uint16_t* Wp, int N, const float* bias, void* out,
              int64_t os, int out_f32, int nthreads) {
#ifdef FR_HAVE_BF16
    const int K2 = K / 2, NB = (N + 31) / 32;
    const int ntile = (M + FR_MT - 1) / FR_MT, mt = ntile ? (M + ntile - 1) / ntile : 0;
    const uint32_t* x2 = (const uint32_t*)x;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int nb = 0; nb < NB; nb++) {
        const uint16_t* Wb = Wp + (int64_t)nb * K2 * 64;
        for (int m0 = 0; m0 < M; m0 += mt) {
            const int m = M - m0 < mt ? M - m0 : mt;
            char* o = (char*)out + (int64_t)m0 * os * (out_f32 ? 4 : 2);
            gemm_tiles[m](x2 + (int64_t)m0 * (xs / 2), xs / 2, Wb, K2, bias, o, os, out_f32, nb * 32, N);
        }
    }
    return 0;
#else
    return -3;
#endif
}

// Pack rows [0, rows) of a (rows, K) weight (row stride ld; fp32 when src_f32 else bf16) as rows row0.. of the
// fr_linear layout [N/32][K/2][32][2] bf16.
void fr_pack(const void* src, int src_f32, int64_t ld, int rows, int K, uint16_t* dst, int row0, int nthreads) {
    const int K2 = K / 2;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int i = 0; i < rows; i++) {
        const int n = row0 + i;
        uint16_t* base = dst + ((int64_t)(n >> 5) * K2 * 32 + (n & 31)) * 2;
        if (src_f32) {
            const float* s = (const float*)src + (int64_t)i * ld;
            for (int kp = 0; kp < K2; kp++) { base[kp * 64] = f2b(s[2 * kp]); base[kp * 64 + 1] = f2b(s[2 * kp + 1]); }
        } else {
            const uint32_t* s = (const uint32_t*)((const uint16_t*)src + (int64_t)i * ld);
            for (int kp = 0; kp < K2; kp++) memcpy(base + kp * 64, s + kp, 4);
        }
    }
}

// x[r] += y[r] (bf16 rounding, skipped when y is NULL); h[r] = w * bf16(x[r] * rsqrt(mean(x^2) + eps))
void fr_add_rmsnorm(uint16_t* x, const uint16_t* y, const uint16_t* w, uint16_t* h, int B, int D, float eps,
                    int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int r = 0; r < B; r++) {
        uint16_t* xr = x + (int64_t)r * D; uint16_t* hr = h + (int64_t)r * D;
        const uint16_t* yr = y ? y + (int64_t)r * D : nullptr;
        vf acc = splat(0.f);
        int d = 0;
        for (; d + 16 <= D; d += 16) {
            vf v = ldh(xr + d);
            if (yr) { sth(xr + d, v + ldh(yr + d)); v = ldh(xr + d); }
            acc += v * v;
        }
        float ss = hsum(acc);
        for (; d < D; d++) {
            float v = b2f(xr[d]);
            if (yr) { v = b2f(f2b(v + b2f(yr[d]))); xr[d] = f2b(v); }
            ss += v * v;
        }
        const float inv = 1.0f / sqrtf(ss / D + eps);
        d = 0;
        for (; d + 16 <= D; d += 16) {
            vf v = ldh(xr + d) * inv;
            vu u = (vu)v; u = u + 0x7fffu + ((u >> 16) & 1u); u = (u >> 16) << 16;   // round to bf16
            sth(hr + d, ldh(w + d) * (vf)u);
        }
        for (; d < D; d++) hr[d] = f2b(b2f(w[d]) * b2f(f2b(b2f(xr[d]) * inv)));
    }
}

// out[r][i] = bf16(silu(g)) * u  with g = gu[r][i], u = gu[r][I + i]
void fr_silu_mul(const uint16_t* gu, uint16_t* out, int B, int I, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int r = 0; r < B; r++) {
        const uint16_t* g = gu + (int64_t)r * 2 * I; const uint16_t* u = g + I; uint16_t* o = out + (int64_t)r * I;
        int i = 0;
        for (; i + 16 <= I; i += 16) {
            vf x = ldh(g + i);
            vf s = x / (1.0f + vexp(-x));
            vu su = (vu)s; su = su + 0x7fffu + ((su >> 16) & 1u); su = (su >> 16) << 16;   // round to bf16
            sth(o + i, (vf)su * ldh(u + i));
        }
        for (; i < I; i++) { float x = b2f(g[i]); o[i] = f2b(b2f(f2b(x / (1.0f + expf(-x)))) * b2f(u[i])); }
    }
}

// Sample one token per row from softmax(logits * inv_temp) (greedy: argmax); lp = log-prob of the token.
// logits: bf16 (is_bf16) or fp32, row stride `stride`. u: uniforms in [0, 1).
void fr_sample(const void* logits, int is_bf16, int B, int V, int64_t stride, float inv_temp, int greedy,
               const double* u, int64_t* tok, float* lp, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        float* z = (float*)aligned_alloc(64, sizeof(float) * ((V + 15) / 16 * 16));
#pragma omp for schedule(static)
        for (int r = 0; r < B; r++) {
            if (is_bf16) {
                const uint16_t* l = (const uint16_t*)logits + (int64_t)r * stride;
                int i = 0;
                for (; i + 16 <= V; i += 16) stf(z + i, ldh(l + i) * inv_temp);
                for (; i < V; i++) z[i] = b2f(l[i]) * inv_temp;
            } else {
                const float* l = (const float*)logits + (int64_t)r * stride;
                int i = 0;
                for (; i + 16 <= V; i += 16) stf(z + i, ldf(l + i) * inv_temp);
                for (; i < V; i++) z[i] = l[i] * inv_temp;
            }
            float m = row_max(z, V, -INFINITY);
            int i = 0; vf acc = splat(0.f);
            for (; i + 16 <= V; i += 16) acc += vexp(ldf(z + i) - m);
            double sum = hsum(acc);
            for (; i < V; i++) sum += sexp(z[i] - m);
            int64_t k = -1;
            if (!greedy) {
                double target = u[r] * sum, cum = 0.0;
                int b = 0;
                for (; b + 16 <= V; b += 16) {
                    vf e = vexp(ldf(z + b) - m); double bs = hsum(e);
                    if (cum + bs > target) {
                        for (int j = 0; j < 16; j++) { cum += e[j]; if (cum > target) { k = b + j; break; } }
                        if (k < 0) k = b + 15;
                        break;
                    }
                    cum += bs;
                }
                if (k < 0) for (; b < V; b++) { cum += sexp(z[b] - m); if (cum > target) { k = b; break; } }
            }
            if (k < 0) { for (int j = 0; j < V; j++) if (z[j] == m) { k = j; break; } }
            if (k < 0) k = 0;
            tok[r] = k;
            lp[r] = (float)((double)(z[k] - m) - log(sum));
        }
        free(z);
    }
}

}
"""

_KERNEL_SIGS = {
    "fr_version": ([], ctypes.c_int),
    "fr_has_bf16": ([], ctypes.c_int),
    "fr_attn_decode_bf16": ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 12
                            + [ctypes.c_int] * 7 + [ctypes.c_float, ctypes.c_int], ctypes.c_int),
    "fr_attn_prefill_bf16": ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 4
                             + [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_int], ctypes.c_int),
    "fr_linear": ([ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                   ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int], ctypes.c_int),
    "fr_pack": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                 ctypes.c_int, ctypes.c_int], None),
    "fr_add_rmsnorm": ([ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int], None),
    "fr_silu_mul": ([ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int], None),
    "fr_sample": ([ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_float,
                   ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int], None),
}
_lib_state: dict = {}
_lib_lock = threading.Lock()


def _kernel_cache_dir() -> Path:
    from .models import cache_dir

    return cache_dir() / "kernels"


def _cpu_key() -> str:
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def load_kernels():
    """The compiled kernel library (ctypes), or ``None`` when it cannot be built (no ``g++``, not x86
    with AVX512-BF16, ``MEDRLVR_FAST_KERNELS=0``). Built once per source/CPU and cached on disk."""
    with _lib_lock:
        if "lib" in _lib_state:
            return _lib_state["lib"]
        lib, why = None, ""
        if os.environ.get("MEDRLVR_FAST_KERNELS", "1") in ("0", "false", "no"):
            why = "disabled by MEDRLVR_FAST_KERNELS=0"
        else:
            try:
                lib = _build_and_load()
                if not lib.fr_has_bf16():
                    lib, why = None, "the CPU/compiler has no AVX512-BF16"
            except (OSError, RuntimeError, subprocess.SubprocessError) as e:
                lib, why = None, str(e)[-500:]
        _lib_state["lib"], _lib_state["why"] = lib, why
        return lib


def kernels_unavailable_reason() -> str:
    load_kernels()
    return _lib_state.get("why", "")


def _build_and_load():
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise RuntimeError("no C++ compiler (g++) found")
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17"]
    key = hashlib.sha256("\n".join([_CSRC, cxx, " ".join(flags), _cpu_key()]).encode()).hexdigest()[:16]
    out = _kernel_cache_dir() / f"fast_rollout_{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            src = Path(tmp) / "k.cpp"
            src.write_text(_CSRC)
            so = Path(tmp) / "k.so"
            proc = subprocess.run([cxx, *flags, str(src), "-o", str(so)], capture_output=True, text=True, timeout=300,
                                  check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"kernel build failed: {proc.stderr[-1000:]}")
            os.replace(so, out)
    # torch is imported first, so the library's libgomp resolves to the OpenMP runtime torch already uses
    lib = ctypes.CDLL(str(out))
    for name, (args, res) in _KERNEL_SIGS.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


# ----------------------------------------------------------------------------------------- weights
def _is_peft(model) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def _effective_linear(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) a linear layer applies now; peft LoRA deltas of the active adapters are added."""
    if hasattr(mod, "base_layer") and hasattr(mod, "lora_A"):
        base = mod.base_layer
        w, b = base.weight, base.bias
        if getattr(mod, "merged", False) or getattr(mod, "disable_adapters", False):
            return w, b
        for name in mod.active_adapters:
            if name not in mod.lora_A:
                continue
            if name in (getattr(mod, "lora_variant", None) or {}) or (getattr(mod, "use_dora", None) or {}).get(name):
                raise UnsupportedModelError("the fast engine supports plain LoRA adapters only (not DoRA / variants)")
            w = w + mod.get_delta_weight(name).to(w.dtype)
            if (getattr(mod, "lora_bias", None) or {}).get(name) and mod.lora_B[name].bias is not None:
                extra = mod.lora_B[name].bias * mod.scaling[name]
                b = extra if b is None else b + extra
        return w, b
    if not isinstance(mod, torch.nn.Linear):
        raise UnsupportedModelError(f"expected a Linear layer, found {type(mod).__name__}")
    return mod.weight, mod.bias


def _rope_type(cfg) -> str:
    rp = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    return (rp.get("rope_type") or rp.get("type") or "default") if isinstance(rp, dict) else "default"


def check_supported(model) -> None:
    """Raise :class:`UnsupportedModelError` unless the fast engine can run ``model``."""
    base = model.get_base_model() if _is_peft(model) else model
    cfg = getattr(base, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(f"the fast engine supports model types {', '.join(SUPPORTED_MODEL_TYPES)}, "
                                    f"not {mt!r}; use engine 'hf'")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"the fast engine needs a SiLU MLP, not {cfg.hidden_act!r}; use engine 'hf'")
    if _rope_type(cfg) in ("dynamic", "longrope"):
        raise UnsupportedModelError(f"the fast engine does not support rope_type={_rope_type(cfg)!r}; use engine 'hf'")
    if mt == "qwen2" and getattr(cfg, "use_sliding_window", False):
        raise UnsupportedModelError("the fast engine does not support Qwen2 sliding-window attention; use engine 'hf'")
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb") \
            or not hasattr(inner, "embed_tokens"):
        raise UnsupportedModelError("unexpected module layout (need model.embed_tokens, model.layers, "
                                    "model.rotary_emb); use engine 'hf'")
    head = getattr(base, "lm_head", None)
    if head is not None and not isinstance(head, torch.nn.Linear) and not hasattr(head, "base_layer"):
        raise UnsupportedModelError(f"unexpected lm_head {type(head).__name__}; use engine 'hf'")
    if inner.embed_tokens.weight.device.type != "cpu":
        raise UnsupportedModelError("the fast engine runs on CPU; use engine 'hf' for a model on "
                                    f"{inner.embed_tokens.weight.device}")


def _set_malloc_reuse() -> None:
    """Keep big freed blocks in the heap (glibc). Fresh mmap'ed pages cost a page fault each, which on
    small VMs dominated weight copies and large matmul outputs. Harmless elsewhere; ignored on failure."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)          # M_MMAP_THRESHOLD
        libc.mallopt(-1, (1 << 31) - 1)    # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


class _Linear:
    """A linear layer over a persistent weight buffer, optionally pre-packed for oneDNN (bf16)."""

    __slots__ = ("b", "packed", "w")

    def __init__(self, w: torch.Tensor, b: torch.Tensor | None):
        self.w, self.b, self.packed = w, b, None

    def pack(self, batch: int) -> None:
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.w, batch)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.b, "none", [], "")
        return F.linear(x, self.w, self.b)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _cat_bias(pairs) -> torch.Tensor | None:
    """Concatenated biases of fused projections (zeros for parts without one); None when none has one."""
    if all(b is None for b, _ in pairs):
        return None
    return torch.cat([b.detach() if b is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                      for b, w in pairs])


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class _Cache:
    """KV cache of one generate call. Prompt part per slot, generated part per row (slot x n).

    Kernel layout (bf16 pairs for AVX512-BF16 dot products; keys in blocks of 32 positions):
    kp (L, S, Hk, P/32, hd/2, 32, 2), vp (L, S, Hk, P/2, hd, 2), kg (L, S, Hk, n, M/32, hd/2, 32, 2),
    vg (L, S, Hk, n, M/2, hd, 2).
    PyTorch layout: kp (L, S, Hk, hd, P) (keys transposed), vp (L, S, Hk, P, hd), kg (L, S, Hk, n, hd, M),
    vg (L, S, Hk, n, M, hd)."""

    def __init__(self, L, S, n, Hk, hd, P, M, dtype, device, kernel: bool):
        self.kernel, self.P, self.M = kernel, P, M

        def z(*shape):
            return torch.zeros(shape, dtype=dtype, device=device)

        if kernel:
            self.kp, self.vp = z(L, S, Hk, P // 32, hd // 2, 32, 2), z(L, S, Hk, P // 2, hd, 2)
            self.kg, self.vg = z(L, S, Hk, n, M // 32, hd // 2, 32, 2), z(L, S, Hk, n, M // 2, hd, 2)
        else:
            self.kp, self.vp = z(L, S, Hk, hd, P), z(L, S, Hk, P, hd)
            self.kg, self.vg = z(L, S, Hk, n, hd, M), z(L, S, Hk, n, M, hd)
        self.ptrs = [tuple(t[li].data_ptr() for t in (self.kp, self.vp, self.kg, self.vg)) for li in range(L)]

    def write_prompt(self, li: int, s: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (Hk, P, hd) of the prompt in slot s, layer li (PyTorch layout; the kernels write their own)."""
        P = k.shape[1]
        self.kp[li, s, :, :, :P] = k.transpose(-1, -2)
        self.vp[li, s, :, :P] = v

    def slot_ptrs(self, li: int, s: int) -> tuple[int, int]:
        return self.kp[li, s].data_ptr(), self.vp[li, s].data_ptr()

    def copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Copy the first ``n`` (a multiple of 32) prompt positions of slot ``src`` to ``dst`` (kernel layout)."""
        self.kp[:, dst, :, :n // 32] = self.kp[:, src, :, :n // 32]
        self.vp[:, dst, :, :n // 2] = self.vp[:, src, :, :n // 2]



def auto_dtype(model) -> str:
    """``"bf16"`` where bf16 is native for ``model``'s device (:func:`medrlvr.hardware.fast_bf16`: CUDA sm80+,
    AVX512-BF16/AMX CPUs, where the C++ kernels or oneDNN run it), else ``"fp32"``: on an AVX2-only CPU
    PyTorch's emulated bf16 is far slower than fp32."""
    from .hardware import fast_bf16

    return "bf16" if fast_bf16(next(model.parameters()).device) else "fp32"


# -------------------------------------------------------------------------------------------- engine
@register_engine("fast")
class FastEngine:
    """Fast batched sampling for Llama / Qwen2 policies; see the module docstring.

    ``dtype``: ``"auto"`` (default: ``bf16`` where it is native, else ``fp32``; see :func:`auto_dtype`),
    ``"bf16"`` or ``"fp32"`` (PyTorch ops, the arithmetic of transformers: greedy decoding gives the tokens
    of ``generate``). ``batch_size``: most
    rows decoded together; the ``n`` samples of a prompt share one slot of ``n`` rows. ``kernels``:
    use the compiled kernels (``None`` = when they build and ``dtype`` is bf16; ``True`` = fail
    otherwise). ``prepack``: PyTorch path, pre-pack the weights for oneDNN once per call
    (``None`` = on CPU when oneDNN is available: 1.3x the fp32 decode speed measured on an AVX2 CPU, and
    greedy tokens still equal ``generate``'s, 20 of 20 SmolLM2 prompts in ``bench/rollout_throughput.py``).
    ``num_threads``: kernel threads; ``None`` = choose between torch's thread count and 1 by measured speed.
    After each call :attr:`last_stats` holds counters (prefill tokens, reused prefix tokens, decode steps,
    kernel threads).
    """

    def __init__(self, model, tokenizer, dtype: str = "auto", batch_size: int = 32, kernels: bool | None = None,
                 prepack: bool | None = None, num_threads: int | None = None):
        check_supported(model)
        if dtype == "auto":
            dtype = auto_dtype(model)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        self.model, self.tok = model, tokenizer
        self.dtype = _DTYPES[dtype]
        self.batch_size = max(1, int(batch_size))
        self.prepack, self.num_threads = prepack, num_threads
        base = model.get_base_model() if _is_peft(model) else model
        self.base, self.cfg = base, base.config
        cfg = self.cfg
        self.D, self.H = cfg.hidden_size, cfg.num_attention_heads
        self.Hk = getattr(cfg, "num_key_value_heads", None) or self.H
        self.hd = getattr(cfg, "head_dim", None) or self.D // self.H
        self.G, self.I, self.V = self.H // self.Hk, cfg.intermediate_size, cfg.vocab_size
        self.L, self.eps = cfg.num_hidden_layers, float(cfg.rms_norm_eps)
        self.scale = self.hd ** -0.5
        self.lib = None
        if self.dtype == torch.bfloat16 and kernels is not False and self.hd in (32, 64, 128) \
                and self.D % 2 == 0 and self.I % 2 == 0:
            self.lib = load_kernels()
            if kernels and self.lib is None:
                raise RuntimeError(f"fast-engine kernels unavailable: {kernels_unavailable_reason()}")
        self._thr_cur = 0                 # kernel threads in use (see _thread_plan)
        self._thr_stats: dict[str, dict[int, float]] = {}
        self._thr_steps: dict[str, int] = {}
        self.min_shared_prefix = 32       # shortest cached prompt prefix worth reusing (kernel path)
        self.last_stats: dict = {}        # counters of the last generate call
        self._w: dict | None = None       # persistent weight buffers
        self._piece: dict[int, str] = {}  # token id -> decoded text (stop-string pre-filter)
        _set_malloc_reuse()

    @property
    def uses_kernels(self) -> bool:
        return self.lib is not None

    # ------------------------------------------------------------------------------- weight snapshot
    @torch.no_grad()
    def _refresh(self, batch: int) -> None:
        """Copy the live weights into the engine's buffers (casting to the engine dtype)."""
        base, dt = self.base, self.dtype
        inner = base.model
        emb = inner.embed_tokens.weight
        dev = emb.device
        if self._w is None:
            self._w = {"layers": [{} for _ in range(self.L)]}
        W = self._w

        def buf(store, key, src):
            t = store.get(key)
            if t is None or t.shape != src.shape:
                t = store[key] = torch.empty(src.shape, dtype=dt, device=dev)
            return t.copy_(src)

        def cat_buf(store, key, parts):
            rows = sum(p.shape[0] for p in parts)
            shape = (rows,) + tuple(parts[0].shape[1:])
            t = store.get(key)
            if t is None or t.shape != shape:
                t = store[key] = torch.empty(shape, dtype=dt, device=dev)
            o = 0
            for p in parts:
                t[o:o + p.shape[0]].copy_(p)
                o += p.shape[0]
            return t

        buf(W, "embed", emb)
        buf(W, "norm", inner.norm.weight)
        head = getattr(base, "lm_head", None)
        if head is None or (isinstance(head, torch.nn.Linear) and head.weight.data_ptr() == emb.data_ptr()):
            W["lm_head"] = W["embed"]
        else:
            hw, hb = _effective_linear(head)
            if hb is not None:
                raise UnsupportedModelError("an lm_head with a bias is not supported; use engine 'hf'")
            W["lm_head"] = buf(W, "lm_head_w", hw)
        for layer, Lw in zip(inner.layers, W["layers"]):
            at, mlp = layer.self_attn, layer.mlp
            (qw, qb), (kw, kb), (vw, vb) = (_effective_linear(m) for m in (at.q_proj, at.k_proj, at.v_proj))
            ow, ob = _effective_linear(at.o_proj)
            (gw, gb), (uw, ub) = _effective_linear(mlp.gate_proj), _effective_linear(mlp.up_proj)
            dw, db = _effective_linear(mlp.down_proj)
            bqkv = _cat_bias([(qb, qw), (kb, kw), (vb, vw)])
            bgu = _cat_bias([(gb, gw), (ub, uw)])
            buf(Lw, "ln1", layer.input_layernorm.weight)
            buf(Lw, "ln2", layer.post_attention_layernorm.weight)
            if self.lib is not None:
                if bgu is not None or db is not None:
                    raise UnsupportedModelError("MLP biases are not supported by the kernels; use kernels=False")
                for key, parts, b in (("qkv", [qw, kw, vw], bqkv), ("o", [ow], ob), ("gu", [gw, uw], None),
                                      ("d", [dw], None)):
                    self._pack(Lw, key, parts, b)
                continue
            wqkv = cat_buf(Lw, "wqkv", [qw, kw, vw])
            wgu = cat_buf(Lw, "wgu", [gw, uw])
            wo, wd = buf(Lw, "wo", ow), buf(Lw, "wd", dw)
            bqkv = buf(Lw, "bqkv", bqkv) if bqkv is not None else None
            bgu = buf(Lw, "bgu", bgu) if bgu is not None else None
            bo = buf(Lw, "bo", ob) if ob is not None else None
            bd = buf(Lw, "bd", db) if db is not None else None
            Lw["qkv"], Lw["o"] = _Linear(wqkv, bqkv), _Linear(wo, bo)
            Lw["gu"], Lw["d"] = _Linear(wgu, bgu), _Linear(wd, bd)
        if self.lib is not None:
            self._pack(W, "head", [W["lm_head"]], None)
        else:
            W["head"] = _Linear(W["lm_head"], None)
            use_pack = self.prepack
            if use_pack is None:
                use_pack = dev.type == "cpu" and torch.backends.mkldnn.is_available()
            if use_pack:
                lins = [Lw[k] for Lw in W["layers"] for k in ("qkv", "o", "gu", "d")] + [W["head"]]
                try:
                    for lin in lins:
                        lin.pack(batch)
                except (RuntimeError, AttributeError):
                    for lin in lins:
                        lin.packed = None
        # RoPE from the module's own inverse frequencies and attention scaling (default/linear/llama3/yarn)
        rot = inner.rotary_emb
        inv = rot.inv_freq.detach().float().clone()
        sc = float(getattr(rot, "attention_scaling", 1.0))
        if W.get("rope_inv") is None or not torch.equal(W["rope_inv"], inv) or W["rope_scale"] != sc:
            W["rope_inv"], W["rope_scale"], W["rope_len"] = inv, sc, 0

    def _pack_threads(self) -> int:
        d = self._thr_stats.get("decode")
        if self.num_threads or not d:
            return int(self.num_threads or 1)
        return min(d, key=d.get)

    def _pack(self, store: dict, key: str, parts: list[torch.Tensor], bias: torch.Tensor | None) -> None:
        """Pack row-concatenated ``parts`` (N, K) for ``fr_linear``: [ceil(N/32)][K/2][32][2] bf16."""
        N, K = sum(p.shape[0] for p in parts), parts[0].shape[1]
        NB = (N + 31) // 32
        dst = store.get("p" + key)
        if dst is None or dst.shape != (NB, K // 2, 32, 2):
            dst = store["p" + key] = torch.zeros(NB, K // 2, 32, 2, dtype=torch.bfloat16, device=parts[0].device)
        o = 0
        for p in parts:
            p = p.detach()
            if p.dtype not in (torch.float32, torch.bfloat16):
                p = p.float()
            if p.stride(1) != 1:
                p = p.contiguous()
            self.lib.fr_pack(p.data_ptr(), int(p.dtype == torch.float32), p.stride(0), p.shape[0], K, dst.data_ptr(),
                             o, self._pack_threads())
            o += p.shape[0]
        store["n" + key] = N
        store["b" + key] = bias.detach().float().contiguous() if bias is not None else None

    def _lin(self, store: dict, key: str, x: torch.Tensor, out_f32: bool = False) -> torch.Tensor:
        """x (M, K) bf16 contiguous rows -> x @ W^T (+ b) with the packed weight ``key`` of ``store``."""
        N = store["n" + key]
        M, K = x.shape
        out = torch.empty(M, N, dtype=torch.float32 if out_f32 else torch.bfloat16, device=x.device)
        b = store["b" + key]
        self.lib.fr_linear(x.data_ptr(), x.stride(0), M, K, store["p" + key].data_ptr(), N,
                           None if b is None else b.data_ptr(), out.data_ptr(), out.stride(0), int(out_f32),
                           self._threads())
        return out

    def _rope(self, n: int):
        """cos/sin tables (positions >= n): in the engine dtype (PyTorch path) and float32 (kernels)."""
        W = self._w
        if W["rope_len"] < n:
            n2 = max(n, 2 * W["rope_len"], 1024)
            t = torch.arange(n2, dtype=torch.float32, device=W["rope_inv"].device)
            freqs = t[:, None] * W["rope_inv"][None, :]
            emb = torch.cat((freqs, freqs), dim=-1)
            W["cos32"], W["sin32"] = (emb.cos() * W["rope_scale"]).contiguous(), (emb.sin() * W["rope_scale"]).contiguous()
            W["cos"], W["sin"] = W["cos32"].to(self.dtype), W["sin32"].to(self.dtype)
            W["rope_len"] = n2
        return W["cos"], W["sin"]

    # -------------------------------------------------------------------------------------- forward
    def _rms(self, x, w):
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return w * xf.to(x.dtype)

    @staticmethod
    def _rot(x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin

    def _threads(self) -> int:
        return self._thr_cur or int(self.num_threads or torch.get_num_threads())

    def _thread_plan(self, kind: str) -> int:
        """Kernel threads for the next decode step / prefill (``kind``). With ``num_threads=None`` and more
        than one torch thread, the engine measures the time per row (decode) or per prompt token (prefill)
        with all threads and with one, keeps the faster and probes the other now and then (every 32 decode
        steps or 8 prefills, times how much slower it was, at most 16 times that; counted over the engine's
        life): on a busy machine the fork/join barriers of a thread pool can cost far more than the second
        core gains, on an idle one two cores are faster."""
        if self.num_threads or torch.get_num_threads() == 1:
            self._thr_cur = int(self.num_threads or 1)
            return self._thr_cur
        n = torch.get_num_threads()
        cands = (n, 1)
        stats = self._thr_stats.setdefault(kind, {})
        step = self._thr_steps[kind] = self._thr_steps.get(kind, -1) + 1
        missing = [c for c in cands if c not in stats]
        if missing:
            self._thr_cur = missing[0]
        else:
            best = min(cands, key=lambda c: stats[c])
            other = cands[1] if best == cands[0] else cands[0]
            base = 32 if kind == "decode" else 8
            every = int(base * min(16.0, max(1.0, stats[other] / max(stats[best], 1e-12))))
            self._thr_cur = other if step % every == 0 else best
        return self._thr_cur

    def _thread_feedback(self, kind: str, nt: int, seconds_per_unit: float) -> None:
        stats = self._thr_stats.setdefault(kind, {})
        old = stats.get(nt)
        current_best = old is not None and all(old <= v for v in stats.values())
        # the setting in use is smoothed; a probe of the other one replaces its (stale) figure
        stats[nt] = 0.7 * old + 0.3 * seconds_per_unit if current_best else seconds_per_unit

    @torch.no_grad()
    def _prefill_torch(self, ids: list[int], slot: int, cache: _Cache) -> torch.Tensor:
        """Run the prompt once and store its K/V in ``slot``; return the last position's logits (1, V)."""
        W = self._w
        P, H, Hk, hd, I = len(ids), self.H, self.Hk, self.hd, self.I
        cos, sin = self._rope(P)
        cos, sin = cos[:P][None], sin[:P][None]
        x = W["embed"][torch.tensor(ids, device=W["embed"].device)]
        layers = W["layers"]
        h = self._rms(x, layers[0]["ln1"])
        for li, Lw in enumerate(layers):
            qkv = Lw["qkv"](h)
            q = qkv[:, :H * hd].view(P, H, hd).transpose(0, 1)
            k = qkv[:, H * hd:(H + Hk) * hd].view(P, Hk, hd).transpose(0, 1)
            v = qkv[:, (H + Hk) * hd:].view(P, Hk, hd).transpose(0, 1)
            q, k = self._rot(q, cos, sin), self._rot(k, cos, sin)
            cache.write_prompt(li, slot, k, v)
            o = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=True, scale=self.scale,
                                               enable_gqa=self.G > 1)
            x = x + Lw["o"](o[0].transpose(0, 1).reshape(P, H * hd))
            h = self._rms(x, Lw["ln2"])
            gu = Lw["gu"](h)
            x = x + Lw["d"](F.silu(gu[:, :I]) * gu[:, I:])
            h = self._rms(x, layers[li + 1]["ln1"] if li + 1 < self.L else W["norm"])
        return W["head"](h[-1:].contiguous())

    @torch.no_grad()
    def _prefill_kernels(self, ids: list[int], p0: int, slot: int, cache: _Cache) -> torch.Tensor:
        """Prefill positions ``p0:`` of ``ids`` into ``slot`` (positions ``:p0`` are already cached there);
        return the last position's float32 logits (1, V)."""
        W, lib = self._w, self.lib
        Pn, D, I, L = len(ids) - p0, self.D, self.I, self.L
        nt, eps = self._threads(), self.eps
        self._rope(len(ids))
        cp, sp = W["cos32"].data_ptr(), W["sin32"].data_ptr()
        x = W["embed"][torch.tensor(ids[p0:], device=W["embed"].device)]
        h = torch.empty_like(x)
        o = torch.empty(Pn, self.H * self.hd, dtype=x.dtype, device=x.device)
        a = torch.empty(Pn, I, dtype=x.dtype, device=x.device)
        layers = W["layers"]
        xp, hp, op, ap = x.data_ptr(), h.data_ptr(), o.data_ptr(), a.data_ptr()
        lib.fr_add_rmsnorm(xp, None, layers[0]["ln1"].data_ptr(), hp, Pn, D, eps, nt)
        for li, Lw in enumerate(layers):
            qkv = self._lin(Lw, "qkv", h)
            kp, vp = cache.slot_ptrs(li, slot)
            rc = lib.fr_attn_prefill_bf16(qkv.data_ptr(), qkv.stride(0), op, o.stride(0), kp, vp, cp, sp, p0, Pn,
                                          self.H, self.Hk, self.hd, cache.P, self.scale, nt)
            if rc != 0:
                raise RuntimeError(f"fr_attn_prefill_bf16 failed ({rc})")
            y = self._lin(Lw, "o", o)
            lib.fr_add_rmsnorm(xp, y.data_ptr(), Lw["ln2"].data_ptr(), hp, Pn, D, eps, nt)
            gu = self._lin(Lw, "gu", h)
            lib.fr_silu_mul(gu.data_ptr(), ap, Pn, I, nt)
            y = self._lin(Lw, "d", a)
            nxt = layers[li + 1]["ln1"] if li + 1 < L else W["norm"]
            lib.fr_add_rmsnorm(xp, y.data_ptr(), nxt.data_ptr(), hp, Pn, D, eps, nt)
        return self._lin(W, "head", h[-1:], out_f32=True)

    @torch.no_grad()
    def _decode_kernels(self, tok, pos, t, plen, slots, start, rj, n, cache: _Cache, scratch) -> torch.Tensor:
        """One decode step over the active rows (C++ kernels, bf16 weights): ``tok``/``pos``/``t``/``rj`` per
        row, rows grouped by slot (``slots``, row offsets ``start``). Returns float32 logits (rows, V)."""
        W, lib = self._w, self.lib
        B, S, D, I, L = tok.shape[0], slots.shape[0], self.D, self.I, self.L
        nt, eps = self._threads(), self.eps
        layers = W["layers"]
        x = W["embed"].index_select(0, tok)
        h, o, a = scratch["h"][:B], scratch["o"][:B], scratch["a"][:B]
        xp, hp, op, ap = x.data_ptr(), h.data_ptr(), o.data_ptr(), a.data_ptr()
        self._rope(int(pos.max()) + 1)
        cp, sp = W["cos32"].data_ptr(), W["sin32"].data_ptr()
        pp, tp, lp = pos.data_ptr(), t.data_ptr(), plen.data_ptr()
        slp, stp, rjp = slots.data_ptr(), start.data_ptr(), rj.data_ptr()
        lib.fr_add_rmsnorm(xp, None, layers[0]["ln1"].data_ptr(), hp, B, D, eps, nt)
        for li, Lw in enumerate(layers):
            qkv = self._lin(Lw, "qkv", h)
            kp, vp, kg, vg = cache.ptrs[li]
            rc = lib.fr_attn_decode_bf16(qkv.data_ptr(), qkv.stride(0), op, o.stride(0), kp, vp, kg, vg, cp, sp,
                                         pp, tp, lp, slp, stp, rjp, S, n, self.H, self.Hk, self.hd, cache.P, cache.M,
                                         self.scale, nt)
            if rc != 0:
                raise RuntimeError(f"fr_attn_decode_bf16 failed ({rc})")
            y = self._lin(Lw, "o", o)
            lib.fr_add_rmsnorm(xp, y.data_ptr(), Lw["ln2"].data_ptr(), hp, B, D, eps, nt)
            gu = self._lin(Lw, "gu", h)
            lib.fr_silu_mul(gu.data_ptr(), ap, B, I, nt)
            y = self._lin(Lw, "d", a)
            nxt = layers[li + 1]["ln1"] if li + 1 < L else W["norm"]
            lib.fr_add_rmsnorm(xp, y.data_ptr(), nxt.data_ptr(), hp, B, D, eps, nt)
        return self._lin(W, "head", h, out_f32=True)

    @torch.no_grad()
    def _decode_torch(self, tok, pos, t, plen, S, n, cache: _Cache, rows: torch.Tensor | None = None) -> torch.Tensor:
        """One decode step with PyTorch ops over the dense slots ``[0, S)``. Returns logits in the engine
        dtype: (S*n, V), or only for ``rows`` (the live ones: finished rows skip the LM head)."""
        W = self._w
        H, Hk, hd, G, P = self.H, self.Hk, self.hd, self.G, cache.P
        B = S * n
        cos_t, sin_t = self._rope(int(pos.max()) + 1)
        cos, sin = cos_t[pos][:, None, :], sin_t[pos][:, None, :]
        slot_idx = torch.arange(S, device=tok.device).repeat_interleave(n)
        row_in_slot = torch.arange(n, device=tok.device).repeat(S)
        T = int(t.max()) + 1
        valid = torch.cat((
            (torch.arange(P, device=tok.device)[None, :] < plen[:, None])[:, None, :].expand(S, n, P),
            (torch.arange(T, device=tok.device)[None, :] <= t[:, None]).view(S, n, T)), dim=-1)
        mask = torch.zeros(valid.shape, dtype=torch.float32, device=tok.device).masked_fill_(~valid, float("-inf"))
        mask = mask.view(S, 1, n, 1, P + T)
        x = W["embed"][tok]
        layers = W["layers"]
        for li, Lw in enumerate(layers):
            h = self._rms(x, Lw["ln1"])
            qkv = Lw["qkv"](h)
            q = qkv[:, :H * hd].view(B, H, hd)
            k = qkv[:, H * hd:(H + Hk) * hd].view(B, Hk, hd)
            v = qkv[:, (H + Hk) * hd:].view(B, Hk, hd)
            q, k = self._rot(q, cos, sin), self._rot(k, cos, sin)
            kg_l, vg_l = cache.kg[li, :S], cache.vg[li, :S]
            kg_l[slot_idx, :, row_in_slot, :, t] = k
            vg_l[slot_idx, :, row_in_slot, t] = v
            qs = q.view(S, n, Hk, G, hd).transpose(1, 2)                               # (S, Hk, n, G, hd)
            sp = torch.matmul(qs.reshape(S, Hk, n * G, hd), cache.kp[li, :S]).view(S, Hk, n, G, P)
            sg = torch.matmul(qs, kg_l[..., :T])                                       # (S, Hk, n, G, T)
            s = torch.cat((sp, sg), dim=-1).float().mul_(self.scale).add_(mask)
            p = torch.softmax(s, dim=-1).to(x.dtype)
            o = torch.matmul(p[..., :P].reshape(S, Hk, n * G, P), cache.vp[li, :S]).view(S, Hk, n, G, hd)
            o = o + torch.matmul(p[..., P:], vg_l[..., :T, :])
            x = x + Lw["o"](o.transpose(1, 2).reshape(B, H * hd))
            h = self._rms(x, Lw["ln2"])
            gu = Lw["gu"](h)
            x = x + Lw["d"](F.silu(gu[:, :self.I]) * gu[:, self.I:])
        if rows is not None and len(rows) < B:
            x = x[rows]
        return W["head"](self._rms(x, W["norm"]))

    # ------------------------------------------------------------------------------------- sampling
    def _sample(self, logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None,
                rows: int | None = None, u: torch.Tensor | None = None):
        """One token per row (``rows`` rows of a single logits row when given); returns (tokens, log-probs)
        with log-probs of ``log_softmax(logits / T)`` (T = 1 when greedy) in float32. ``u``: the rows'
        uniforms in [0, 1) (float64), drawn by the caller (per-prompt generators), instead of ``gen``."""
        greedy = params.temperature == 0
        simple = greedy or ((not params.top_k or params.top_k >= logits.shape[-1]) and params.top_p >= 1.0)
        if self.lib is not None and simple and logits.dtype in (torch.bfloat16, torch.float32):
            B = rows if rows is not None else logits.shape[0]
            lg = logits.contiguous()
            if greedy:
                u = torch.zeros(B, dtype=torch.float64)
            elif u is None:
                u = torch.rand(B, dtype=torch.float64, generator=gen, device=lg.device)
            u = u.contiguous()
            tok = torch.empty(B, dtype=torch.long)
            lp = torch.empty(B, dtype=torch.float32)
            self.lib.fr_sample(lg.data_ptr(), int(lg.dtype == torch.bfloat16), B, lg.shape[-1],
                               0 if rows is not None else lg.stride(0), 1.0 if greedy else 1.0 / params.temperature,
                               int(greedy), u.data_ptr(), tok.data_ptr(), lp.data_ptr(), self._threads())
            return tok, lp
        logits = logits.float()
        if rows is not None:
            logits = logits.expand(rows, -1)
        if greedy:
            tok = logits.argmax(-1)
            return tok, logits.gather(1, tok[:, None])[:, 0] - torch.logsumexp(logits, -1)
        z = logits / params.temperature if params.temperature != 1.0 else logits
        lse = torch.logsumexp(z, -1)
        zf = z
        if params.top_k and 0 < params.top_k < z.shape[-1]:
            kth = torch.topk(zf, params.top_k, dim=-1).values[:, -1:]
            zf = zf.masked_fill(zf < kth, float("-inf"))
        if params.top_p < 1.0:
            sz, si = torch.sort(zf, dim=-1, descending=True)
            sp = torch.softmax(sz, dim=-1)
            drop = (sp.cumsum(-1) - sp) > params.top_p      # keep the smallest prefix reaching top_p
            drop[:, 0] = False
            zf = zf.scatter(1, si, sz.masked_fill(drop, float("-inf")))
        cdf = torch.softmax(zf, dim=-1).cumsum(-1)
        if u is None:
            u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, generator=gen, device=cdf.device)
        else:
            u = u.to(device=cdf.device, dtype=cdf.dtype).reshape(-1, 1)
        u = u * cdf[:, -1:]
        tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
        return tok, z.gather(1, tok[:, None])[:, 0] - lse

    # ------------------------------------------------------------------------------------ stopping
    def _may_end_stop(self, t: int, last_chars: str) -> bool:
        p = self._piece.get(t)
        if p is None:
            p = self._piece[t] = self.tok.decode([t], skip_special_tokens=False)
        return "\ufffd" in p or any(c in p for c in last_chars)

    # ------------------------------------------------------------------------------------- generate
    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        tok = self.tok
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        for i, e in enumerate(enc):
            if not e:
                raise ValueError(f"prompt {i} is empty after tokenization")
        eos = eos_token_ids(self.model, tok)
        stop = tuple(s for s in (params.stop or ()) if s)
        stop_last = "".join(sorted({s[-1] for s in stop}))
        stop_window = 4 * max((len(s) for s in stop), default=0) + 2
        Mnew = params.max_new_tokens
        kernel = self.lib is not None
        groups = max(1, self.batch_size // n)
        # kernels: extra slots let a new prompt start while the stragglers of another group finish (finished
        # rows cost nothing there); PyTorch path: dense slots, refilled when all their samples are done
        S = min(len(prompts), 2 * groups if kernel else groups)
        max_rows = max(self.batch_size, n)
        dev = self.base.model.embed_tokens.weight.device
        self._refresh(min(len(prompts), groups) * n)
        Pcap = _round_up(max(len(e) for e in enc), 32)
        Mcap = _round_up(Mnew, 32)
        self._rope(Pcap + Mcap + 1)
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2 ** 62, (1,)).item())
        gen = torch.Generator(device=dev).manual_seed(int(seed))
        # per-prompt generators (params.prompt_seeds): the slot holding prompt g draws its rows' uniforms
        # from g's own generator, so g's samples do not depend on which prompts share the call
        pseeds = params.prompt_seeds
        if pseeds is not None and len(pseeds) != len(prompts):
            raise ValueError(f"{len(pseeds)} prompt_seeds for {len(prompts)} prompts")
        cache = _Cache(self.L, S, n, self.Hk, self.hd, Pcap, Mcap, self.dtype, dev, kernel)
        scratch = None
        if kernel:
            scratch = {k: torch.empty(max_rows, w, dtype=self.dtype, device=dev)
                       for k, w in (("h", self.D), ("o", self.H * self.hd), ("a", self.I))}

        slot_tokens: list[list[int] | None] = [None] * S   # prompt whose K/V the slot's prompt cache holds
        slot_gen: list[torch.Generator | None] = [None] * S
        stats = self.last_stats = {"prefill_tokens": 0, "shared_prefix_tokens": 0, "decode_steps": 0,
                                   "generated_tokens": 0, "kernels": kernel}
        results: list[list[Completion | None]] = [[None] * n for _ in prompts]
        queue = deque(range(len(prompts)))
        slot_group = [-1] * S                    # prompt held by each slot (-1: free)
        plen = torch.zeros(S, dtype=torch.long)  # its prompt length
        NR = S * n                               # cache rows: row r = slot r // n, sample r % n
        rows_ids: list[list[int]] = [[] for _ in range(NR)]
        rows_lp: list[list[float]] = [[] for _ in range(NR)]
        done = [True] * NR
        cur = torch.zeros(NR, dtype=torch.long)  # last sampled token of each row
        t = torch.zeros(NR, dtype=torch.long)    # its index in the completion
        n_active = 0

        def after_token(r: int, token: int, lp: float) -> None:
            ids = rows_ids[r]
            ids.append(token)
            rows_lp[r].append(lp)
            if len(ids) >= Mnew or (not params.ignore_eos and token in eos):
                done[r] = True
            elif stop and self._may_end_stop(token, stop_last):
                text = tok.decode(ids[-stop_window:], skip_special_tokens=False)
                if any(s_ in text for s_ in stop):
                    done[r] = True

        def finalize_slot(s: int) -> None:
            g = slot_group[s]
            for j in range(n):
                r = s * n + j
                results[g][j] = finish(tok, enc[g], rows_ids[r], params, eos, rows_lp[r])
            slot_group[s] = -1

        def fill_slot(s: int) -> None:
            g = queue.popleft()
            slot_group[s] = g
            ids = enc[g]
            plen[s] = len(ids)
            if kernel:
                # reuse the longest cached prompt prefix (the shared prompt template) from any slot
                best, donor = 0, -1
                for d, toks in enumerate(slot_tokens):
                    if toks:
                        k = _common_prefix(ids, toks)
                        if k > best:
                            best, donor = k, d
                p0 = min(best, len(ids) - 1) // 32 * 32
                if p0 < self.min_shared_prefix:
                    p0 = 0
                elif donor != s:
                    cache.copy_prefix(donor, s, p0)
                slot_tokens[s] = None
                stats["prefill_tokens"] += len(ids) - p0
                stats["shared_prefix_tokens"] += p0
                nt = self._thread_plan("prefill")
                t0 = time.perf_counter()
                logits = self._prefill_kernels(ids, p0, s, cache)
                self._thread_feedback("prefill", nt, (time.perf_counter() - t0) / (len(ids) - p0))
                slot_tokens[s] = ids
            else:
                stats["prefill_tokens"] += len(ids)
                logits = self._prefill_torch(ids, s, cache)
            u0 = None
            if pseeds is not None:
                slot_gen[s] = torch.Generator(device=dev).manual_seed(int(pseeds[g]))
                u0 = torch.rand(n, dtype=torch.float64, generator=slot_gen[s], device=dev)
            tk, lp = self._sample(logits, params, gen, rows=n, u=u0)
            tl, ll = tk.tolist(), lp.tolist()
            for j in range(n):
                r = s * n + j
                rows_ids[r], rows_lp[r], done[r] = [], [], False
                cur[r], t[r] = tl[j], 0
                after_token(r, tl[j], ll[j])

        while True:
            for s in range(S):                   # free finished slots
                if slot_group[s] >= 0 and all(done[s * n:(s + 1) * n]):
                    finalize_slot(s)
            n_active = sum(1 for r in range(NR) if not done[r])
            for s in range(S):                   # admit new prompts while rows are available
                if not queue or n_active + n > max_rows:
                    break
                if slot_group[s] < 0:
                    fill_slot(s)
                    if all(done[s * n:(s + 1) * n]):
                        finalize_slot(s)
                    else:
                        n_active += sum(1 for j in range(n) if not done[s * n + j])
            act = [r for r in range(NR) if not done[r]]
            if not act:
                if queue:
                    continue
                break
            if kernel:
                act_t = torch.tensor(act, dtype=torch.long)
                slots_l, start_l = [], []
                for i, r in enumerate(act):
                    if not slots_l or slots_l[-1] != r // n:
                        slots_l.append(r // n)
                        start_l.append(i)
                start_l.append(len(act))
                slots_t = torch.tensor(slots_l, dtype=torch.long)
                tb = t[act_t]
                pos = plen[act_t // n] + tb
                nt = self._thread_plan("decode")
                t0 = time.perf_counter()
                logits = self._decode_kernels(cur[act_t], pos, tb, plen, slots_t, torch.tensor(start_l, dtype=torch.long),
                                              act_t % n, n, cache, scratch)
                self._thread_feedback("decode", nt, (time.perf_counter() - t0) / len(act))
            else:
                Se = max(r // n for r in act) + 1     # dense over the slots up to the last live one
                tb = t[:Se * n].clamp(max=Mnew - 1)   # finished rows idle in place until their slot is freed
                pos = plen[:Se].repeat_interleave(n) + tb
                act_t = torch.tensor(act, dtype=torch.long)
                logits = self._decode_torch(cur[:Se * n], pos, tb, plen[:Se], Se, n, cache, rows=act_t)
            ua = None
            if pseeds is not None:   # act is sorted: the rows of one slot are contiguous
                parts, i0 = [], 0
                while i0 < len(act):
                    s_ = act[i0] // n
                    i1 = i0
                    while i1 < len(act) and act[i1] // n == s_:
                        i1 += 1
                    parts.append(torch.rand(i1 - i0, dtype=torch.float64, generator=slot_gen[s_], device=dev))
                    i0 = i1
                ua = torch.cat(parts)
            tk, lp = self._sample(logits, params, gen, u=ua)
            tl, ll = tk.tolist(), lp.tolist()
            cur[act_t] = tk
            t[act_t] += 1
            stats["decode_steps"] += 1
            for i, r in enumerate(act):
                after_token(r, tl[i], ll[i])
        stats["generated_tokens"] = sum(len(c.token_ids) for grp in results for c in grp)
        if kernel:
            stats["kernel_threads"] = self._thr_cur
            stats["thread_timings_us"] = {kind: {k: round(v * 1e6, 1) for k, v in d.items()}
                                          for kind, d in self._thr_stats.items()}
        return results  # type: ignore[return-value]
