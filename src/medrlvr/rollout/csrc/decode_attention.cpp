// medrlvr fast engine: one decode step of attention for one layer, fused; and the decode step's
// element-wise glue (residual add + RMSNorm, SiLU-gated product), one call each instead of ~8 ops.
//
// Replaces ~25 small PyTorch ops per layer and step (RoPE, two cache writes, four batched products over
// tiny matrices, the mask, the softmax and the copies between them) by one call, parallel over
// (slot, KV head) with OpenMP (the thread count torch has set). Storage is bf16 or float32; all math is
// float32 (scores, softmax and the weighted sums are never rounded to bf16).
//
// Layouts (one layer; S = slots, n = samples per slot, B = S * n rows, row r = slot * n + sample):
//   qkv  (B, (H + 2 Hk) hd)       the fused QKV projection of this step, q heads first, then k, then v
// P and M are multiples of 16 and hd of 16 (the caller checks); scores of keys past plen / t are
// computed in whole blocks of 16 and ignored.
//   cos, sin (rope_len, hd)       float32 tables (attention scaling included)
//   pos  (B,)                     each row's absolute position; t (B,) its index in the generated part
//   kp   (S, Hk, P/16, hd, 16)    prompt keys in blocks of 16 keys, each block transposed;
//                                 vp (S, Hk, P, hd) prompt values; plen (S,)
//   kg (S, Hk, n, M/16, hd, 16)   generated keys, blocked like kp; vg (S, Hk, n, M, hd) generated values
//                                 (this step's key and value are written here, at t[r])
//   out  (B, H hd)                attention output, heads in the order of the q projection
//
// Built by medrlvr.rollout.fast with: g++ -O3 -march=native -fopenmp -shared -fPIC -std=c++17.
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>
#include <vector>

namespace {

typedef float vf __attribute__((vector_size(64)));   // 16 floats; split into AVX2 halves where needed
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

inline vf splat(float s) { return vf{} + s; }
inline vf ldf(const float* p) { vf v; memcpy(&v, p, 64); return v; }
inline void stf(float* p, vf v) { memcpy(p, &v, 64); }
inline float hsum(vf v) { float s = 0; for (int i = 0; i < 16; i++) s += v[i]; return s; }
inline float hmax(vf v) { float s = v[0]; for (int i = 1; i < 16; i++) s = v[i] > s ? v[i] : s; return s; }

// exp(x) for float32 lanes: range reduction to [-ln2/2, ln2/2] and a degree-7 polynomial (rel. error < 2e-7)
inline vf vexp(vf x) {
    x = x < -87.0f ? splat(-87.0f) : x;
    x = x > 88.0f ? splat(88.0f) : x;
    vf t = x * 1.44269504088896341f;
    vf k = __builtin_convertvector(__builtin_convertvector(t + (t >= 0.0f ? splat(0.5f) : splat(-0.5f)), vi), vf);
    vf r = x - k * 0.693145751953125f;
    r = r - k * 1.428606765330187045e-06f;
    vf p = splat(1.0f / 5040.0f);
    p = p * r + (1.0f / 720.0f); p = p * r + (1.0f / 120.0f); p = p * r + (1.0f / 24.0f);
    p = p * r + (1.0f / 6.0f); p = p * r + 0.5f; p = p * r + 1.0f; p = p * r + 1.0f;
    vi e = (__builtin_convertvector(k, vi) + 127) << 23;
    return p * (vf)e;
}

// storage types: float32 or bf16 (uint16_t, round to nearest even on store)
inline float to_f(float x) { return x; }
inline float to_f(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
inline void from_f(float* p, float f) { *p = f; }
inline void from_f(uint16_t* p, float f) {
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = (uint16_t)((u >> 16) | 0x40); return; }   // NaN stays NaN
    *p = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline vf ld16(const float* p) { return ldf(p); }
inline vf ld16(const uint16_t* p) { vh h; memcpy(&h, p, 32); vu u = __builtin_convertvector(h, vu) << 16; return (vf)u; }

// RoPE of one head (rotate-half convention of transformers' Llama / Qwen2), float32 result
template <typename T>
void rope(const T* x, const float* c, const float* s, int hd, float mul, float* y) {
    int h = hd / 2;
    for (int d = 0; d < h; d++) {
        float a = to_f(x[d]), b = to_f(x[d + h]);
        y[d] = (a * c[d] - b * s[d]) * mul;
        y[d + h] = (b * c[d + h] + a * s[d + h]) * mul;
    }
}

// f(std::integral_constant<int, N>{}) for the N in 1..MAX equal to n (nothing for n outside it): a run-time
// count (the rows left after the full register blocks) as a template argument.
template <int MAX, typename F>
inline void with_const(int n, F&& f) {
    if constexpr (MAX > 0) {
        if (n == MAX)
            f(std::integral_constant<int, MAX>{});
        else
            with_const<MAX - 1>(n, f);
    }
}

// sc[i][p] = q[i] . k[p] for QB queries (rows of q, length hd) and keys p in [0, len16) (a multiple of 16),
// keys stored in blocks of 16 (kb[p / 16][d][p % 16]: each block one contiguous read). The QB x 16 scores of
// a block stay in registers.
template <int QB, typename T>
void qk_block(const float* q, int hd, const T* kb, int len16, float* sc, int ldsc) {
    for (int p = 0; p < len16; p += 16) {
        vf acc[QB];
        const T* blk = kb + (size_t)p * hd;
        for (int i = 0; i < QB; i++) acc[i] = splat(0.0f);
        for (int d = 0; d < hd; d++) {
            const vf k = ld16(blk + (size_t)d * 16);
            for (int i = 0; i < QB; i++) acc[i] += q[(size_t)i * hd + d] * k;
        }
        for (int i = 0; i < QB; i++) stf(sc + (size_t)i * ldsc + p, acc[i]);
    }
}

template <typename T>
void qk(const float* q, int nq, int hd, const T* kb, int len16, float* sc, int ldsc) {
    int i = 0;
    for (; i + 8 <= nq; i += 8) qk_block<8>(q + (size_t)i * hd, hd, kb, len16, sc + (size_t)i * ldsc, ldsc);
    with_const<7>(nq - i, [&](auto qb) {
        qk_block<decltype(qb)::value>(q + (size_t)i * hd, hd, kb, len16, sc + (size_t)i * ldsc, ldsc);
    });
}

// o[i][d0 + 16 DV) += sum_p w[i][p] v[p][d0 ...] for QB weight rows and len values (rows of v, stride hd).
template <int QB, int DV, typename T>
void pv_block(const float* w, int ldw, const T* v, int hd, int d0, int len, float* o) {
    vf acc[QB][DV];
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < DV; b++) acc[i][b] = ldf(o + (size_t)i * hd + d0 + 16 * b);
    for (int p = 0; p < len; p++) {
        vf vv[DV];
        for (int b = 0; b < DV; b++) vv[b] = ld16(v + (size_t)p * hd + d0 + 16 * b);
        for (int i = 0; i < QB; i++) {
            const float wi = w[(size_t)i * ldw + p];
            for (int b = 0; b < DV; b++) acc[i][b] += wi * vv[b];
        }
    }
    for (int i = 0; i < QB; i++)
        for (int b = 0; b < DV; b++) stf(o + (size_t)i * hd + d0 + 16 * b, acc[i][b]);
}

template <int QB, typename T>
void pv_rows(const float* w, int ldw, const T* v, int hd, int len, float* o) {
    int d0 = 0;
    for (; d0 + 64 <= hd; d0 += 64) pv_block<QB, 4>(w, ldw, v, hd, d0, len, o);
    with_const<3>((hd - d0) / 16, [&](auto dv) { pv_block<QB, decltype(dv)::value>(w, ldw, v, hd, d0, len, o); });
}

template <typename T>
void pv(const float* w, int nq, int ldw, const T* v, int hd, int len, float* o) {
    int i = 0;
    for (; i + 5 <= nq; i += 5) pv_rows<5>(w + (size_t)i * ldw, ldw, v, hd, len, o + (size_t)i * hd);
    with_const<4>(nq - i, [&](auto qb) {
        pv_rows<decltype(qb)::value>(w + (size_t)i * ldw, ldw, v, hd, len, o + (size_t)i * hd);
    });
}

// exp(x - max) in place over [0, len) and 1 / their sum
inline float softmax_row(float* a, int len) {
    vf vm = splat(-INFINITY);
    int p = 0;
    for (; p + 16 <= len; p += 16) { vf x = ldf(a + p); vm = x > vm ? x : vm; }
    float m = hmax(vm);
    for (; p < len; p++) m = a[p] > m ? a[p] : m;
    vf acc = splat(0.0f);
    float sum = 0.0f;
    p = 0;
    for (; p + 16 <= len; p += 16) { vf e = vexp(ldf(a + p) - m); stf(a + p, e); acc += e; }
    for (; p < len; p++) { float e = vexp(splat(a[p] - m))[0]; a[p] = e; sum += e; }
    return 1.0f / (sum + hsum(acc));
}

template <typename T>
void decode_attn(const T* qkv, const float* cos_t, const float* sin_t, const int64_t* pos, T* kp, T* vp, T* kg,
                 T* vg, const int64_t* plen, const int64_t* tt, T* out, int S, int n, int H, int Hk, int hd, int P,
                 int M, float scale) {
    const int G = H / Hk, nG = n * G, W = (H + 2 * Hk) * hd;
    const int ld = P + M + 32;   // one score row: prompt part [0, Pv), generated part [Pv, Pv + Tv), slack
#pragma omp parallel
    {
        std::vector<float> q((size_t)nG * hd), o((size_t)nG * hd), krow(hd), sc((size_t)nG * ld), inv(nG);
#pragma omp for schedule(static)
        for (int item = 0; item < S * Hk; item++) {
            const int s = item / Hk, h = item % Hk;
            const int Pv = (int)plen[s];
            // 1. RoPE: queries (scale folded in); this step's key (transposed) and value into the cache
            for (int j = 0; j < n; j++) {
                const int r = s * n + j;
                const float* c = cos_t + (size_t)pos[r] * hd;
                const float* sn = sin_t + (size_t)pos[r] * hd;
                const T* row = qkv + (size_t)r * W;
                for (int g = 0; g < G; g++) rope(row + (size_t)(h * G + g) * hd, c, sn, hd, scale, &q[(size_t)(j * G + g) * hd]);
                rope(row + (size_t)(H + h) * hd, c, sn, hd, 1.0f, krow.data());
                const size_t base = ((size_t)item * n + j) * M * hd;
                const size_t kat = base + (size_t)(tt[r] / 16) * hd * 16 + tt[r] % 16;
                for (int d = 0; d < hd; d++) {
                    from_f(kg + kat + (size_t)d * 16, krow[d]);
                    vg[base + (size_t)tt[r] * hd + d] = row[(size_t)(H + Hk + h) * hd + d];
                }
            }
            // 2. scores against the prompt: one pass over its keys for all n * G queries
            qk(q.data(), nG, hd, kp + (size_t)item * hd * P, (Pv + 15) / 16 * 16, sc.data(), ld);
            // 3. each sample's scores against its own generated keys, then the softmax of the whole row
            for (int j = 0; j < n; j++) {
                const int Tv = (int)tt[s * n + j] + 1;
                const size_t base = ((size_t)item * n + j) * M * hd;
                qk(&q[(size_t)j * G * hd], G, hd, kg + base, (Tv + 15) / 16 * 16, &sc[(size_t)j * G * ld + Pv], ld);
                for (int g = 0; g < G; g++) inv[j * G + g] = softmax_row(&sc[(size_t)(j * G + g) * ld], Pv + Tv);
            }
            // 4. weighted sums: the prompt's values for all queries, then each sample's own values
            for (size_t i = 0; i < (size_t)nG * hd; i++) o[i] = 0.0f;
            pv(sc.data(), nG, ld, vp + (size_t)item * P * hd, hd, Pv, o.data());
            for (int j = 0; j < n; j++) {
                const int Tv = (int)tt[s * n + j] + 1;
                const size_t base = ((size_t)item * n + j) * M * hd;
                pv(&sc[(size_t)j * G * ld + Pv], G, ld, vg + base, hd, Tv, &o[(size_t)j * G * hd]);
            }
            // 5. normalise and store: out[r, (h G + g) hd + d]
            for (int j = 0; j < n; j++) {
                const int r = s * n + j;
                for (int g = 0; g < G; g++) {
                    const int qi = j * G + g;
                    T* dst = out + (size_t)r * H * hd + (size_t)(h * G + g) * hd;
                    const float* oo = &o[(size_t)qi * hd];
                    for (int d = 0; d < hd; d++) from_f(dst + d, oo[d] * inv[qi]);
                }
            }
        }
    }
}

inline void st16(float* p, vf v) { stf(p, v); }
inline void st16(uint16_t* p, vf v) {   // round to nearest even (finite values)
    vu u = (vu)v;
    u = u + 0x7fffu + ((u >> 16) & 1u);
    vh h = __builtin_convertvector(u >> 16, vh);
    memcpy(p, &h, 32);
}

// x += y (y may be null), then h = x * rsqrt(mean(x^2) + eps) * w, per row of D; float32 math.
template <typename T>
void add_rmsnorm(T* x, const T* y, const T* w, T* h, int rows, int D, float eps) {
    const int D16 = D / 16 * 16;
#pragma omp parallel for schedule(static) if ((long)rows * D >= 131072)
    for (int r = 0; r < rows; r++) {
        T* xr = x + (size_t)r * D;
        const T* yr = y ? y + (size_t)r * D : nullptr;
        vf acc = splat(0.0f);
        float ss = 0.0f;
        int d = 0;
        for (; d < D16; d += 16) {
            vf v = ld16(xr + d);
            if (yr) { st16(xr + d, v + ld16(yr + d)); v = ld16(xr + d); }   // the stored (rounded) sum
            acc += v * v;
        }
        for (; d < D; d++) {
            if (yr) from_f(xr + d, to_f(xr[d]) + to_f(yr[d]));
            const float v = to_f(xr[d]);
            ss += v * v;
        }
        const float rs = 1.0f / sqrtf((ss + hsum(acc)) / (float)D + eps);
        T* hr = h + (size_t)r * D;
        d = 0;
        for (; d < D16; d += 16) st16(hr + d, ld16(xr + d) * rs * ld16(w + d));
        for (; d < D; d++) from_f(hr + d, to_f(xr[d]) * rs * to_f(w[d]));
    }
}

// out[r] = silu(gu[r, :I]) * gu[r, I:2I]
template <typename T>
void silu_mul(const T* gu, T* out, int rows, int I) {
    const int I16 = I / 16 * 16;
#pragma omp parallel for schedule(static) if ((long)rows * I >= 131072)
    for (int r = 0; r < rows; r++) {
        const T* g = gu + (size_t)r * 2 * I;
        const T* u = g + I;
        T* o = out + (size_t)r * I;
        int i = 0;
        for (; i < I16; i += 16) {
            const vf a = ld16(g + i);
            st16(o + i, a / (1.0f + vexp(-a)) * ld16(u + i));
        }
        for (; i < I; i++) {
            const float a = to_f(g[i]);
            from_f(o + i, a / (1.0f + vexp(splat(-a))[0]) * to_f(u[i]));
        }
    }
}

}  // namespace

extern "C" {
int fr_abi_version() { return 2; }

void fr_add_rmsnorm_bf16(uint16_t* x, const uint16_t* y, const uint16_t* w, uint16_t* h, int rows, int D, float eps) {
    add_rmsnorm<uint16_t>(x, y, w, h, rows, D, eps);
}
void fr_add_rmsnorm_f32(float* x, const float* y, const float* w, float* h, int rows, int D, float eps) {
    add_rmsnorm<float>(x, y, w, h, rows, D, eps);
}
void fr_silu_mul_bf16(const uint16_t* gu, uint16_t* out, int rows, int I) { silu_mul<uint16_t>(gu, out, rows, I); }
void fr_silu_mul_f32(const float* gu, float* out, int rows, int I) { silu_mul<float>(gu, out, rows, I); }

void fr_decode_attn_bf16(const uint16_t* qkv, const float* cos_t, const float* sin_t, const int64_t* pos, uint16_t* kp,
                         uint16_t* vp, uint16_t* kg, uint16_t* vg, const int64_t* plen, const int64_t* t, uint16_t* out,
                         int S, int n, int H, int Hk, int hd, int P, int M, float scale) {
    decode_attn<uint16_t>(qkv, cos_t, sin_t, pos, kp, vp, kg, vg, plen, t, out, S, n, H, Hk, hd, P, M, scale);
}

void fr_decode_attn_f32(const float* qkv, const float* cos_t, const float* sin_t, const int64_t* pos, float* kp,
                        float* vp, float* kg, float* vg, const int64_t* plen, const int64_t* t, float* out, int S,
                        int n, int H, int Hk, int hd, int P, int M, float scale) {
    decode_attn<float>(qkv, cos_t, sin_t, pos, kp, vp, kg, vg, plen, t, out, S, n, H, Hk, hd, P, M, scale);
}
}
