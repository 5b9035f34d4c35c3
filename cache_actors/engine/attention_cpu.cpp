// Flash attention for float32 CPU prefills with 64-dim heads (AVX-512), built at model load by
// cache_actors/engine/attention_kernel.py. Why it exists and what it measured: that module's docstring.
//
// Per (row, KV head, block of query rows): K is transposed once per head into a shared buffer; each tile of 4
// query rows runs over 64-key blocks with its scores, the online softmax and its 4 x 64 output in registers.
// Masks: an additive bias [R, 1, M, N] (0 / -inf), or causal (row m sees keys j <= past + m % width), or none.
// `decode` (at the end): one token per row over a ragged batch's rows, read in place.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "attention_decode.h"
#include "attention_prefill.h"
#include <cmath>
#include <limits>
#include <vector>
#include <cstring>

static inline __m512 exp512(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f);
  x = _mm512_max_ps(_mm512_min_ps(x, hi), lo);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

constexpr int BN = PREFILL_BN;
constexpr int MR = 4;
constexpr int D = 64;
static const float NEG_INF = -std::numeric_limits<float>::infinity();

// One micro-tile of MR query rows against one block of <= BN keys, scores and softmax kept in registers.
static inline __mmask16 lanes(int left) { return left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? (__mmask16)0 : (__mmask16)((1u << left) - 1); }

static inline void tile(const float* qt, const float* kt, int64_t ldk, const float* const* brow, const int* limit, int nb,
                        float sc, float* mrow, float* lrow, float* const* orow, float* s, const float* vb, int64_t vstride) {
  __m512 c[MR][4];
#pragma GCC unroll 4
  for (int a = 0; a < MR; ++a) { c[a][0] = c[a][1] = c[a][2] = c[a][3] = _mm512_setzero_ps(); }
#pragma GCC unroll 2
  for (int d = 0; d < D; ++d) {
    const __m512 k0 = _mm512_loadu_ps(kt + d * ldk), k1 = _mm512_loadu_ps(kt + d * ldk + 16),
                 k2 = _mm512_loadu_ps(kt + d * ldk + 32), k3 = _mm512_loadu_ps(kt + d * ldk + 48);
#pragma GCC unroll 4
    for (int a = 0; a < MR; ++a) {
      const __m512 qa = _mm512_set1_ps(qt[a * D + d]);
      c[a][0] = _mm512_fmadd_ps(qa, k0, c[a][0]); c[a][1] = _mm512_fmadd_ps(qa, k1, c[a][1]);
      c[a][2] = _mm512_fmadd_ps(qa, k2, c[a][2]); c[a][3] = _mm512_fmadd_ps(qa, k3, c[a][3]);
    }
  }
  const __m512 vsc = _mm512_set1_ps(sc), ninf = _mm512_set1_ps(NEG_INF);
  float alpha[MR];
#pragma GCC unroll 4
  for (int a = 0; a < MR; ++a) {
    __m512 mx = ninf;
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
      const __mmask16 keep = lanes(limit[a] - 16 * b);
      __m512 x = _mm512_mul_ps(c[a][b], vsc);
      if (brow[a]) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(keep, brow[a] + 16 * b));
      c[a][b] = _mm512_mask_blend_ps(keep, ninf, x);
      mx = _mm512_max_ps(mx, c[a][b]);
    }
    const float mold = mrow[a], mnew = std::max(mold, _mm512_reduce_max_ps(mx));
    if (mnew == NEG_INF) {
      alpha[a] = 1.f;
#pragma GCC unroll 4
      for (int b = 0; b < 4; ++b) _mm512_store_ps(s + a * BN + 16 * b, _mm512_setzero_ps());
      continue;
    }
    alpha[a] = std::exp(mold - mnew);
    const __m512 vm = _mm512_set1_ps(mnew);
    __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) {
      const __mmask16 live = _mm512_cmp_ps_mask(c[a][b], ninf, _CMP_NEQ_OQ);
      const __m512 p = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(c[a][b], vm)));
      _mm512_store_ps(s + a * BN + 16 * b, p);
      sum = _mm512_add_ps(sum, p);
    }
    lrow[a] = lrow[a] * alpha[a] + _mm512_reduce_add_ps(sum);
    mrow[a] = mnew;
  }
  __m512 o[MR][4];
#pragma GCC unroll 4
  for (int a = 0; a < MR; ++a) {
    const __m512 va = _mm512_set1_ps(alpha[a]);
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) o[a][b] = _mm512_mul_ps(_mm512_loadu_ps(orow[a] + 16 * b), va);
  }
  for (int j = 0; j < nb; ++j) {
    const float* vr = vb + j * vstride;
    const __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16), v2 = _mm512_loadu_ps(vr + 32), v3 = _mm512_loadu_ps(vr + 48);
#pragma GCC unroll 4
    for (int a = 0; a < MR; ++a) {
      const __m512 pa = _mm512_set1_ps(s[a * BN + j]);
      o[a][0] = _mm512_fmadd_ps(pa, v0, o[a][0]); o[a][1] = _mm512_fmadd_ps(pa, v1, o[a][1]);
      o[a][2] = _mm512_fmadd_ps(pa, v2, o[a][2]); o[a][3] = _mm512_fmadd_ps(pa, v3, o[a][3]);
    }
  }
#pragma GCC unroll 4
  for (int a = 0; a < MR; ++a) {
#pragma GCC unroll 4
    for (int b = 0; b < 4; ++b) _mm512_storeu_ps(orow[a] + 16 * b, o[a][b]);
  }
}


struct Tile512 {
  static constexpr int MR = ::MR;
  template <typename... Args>
  static void run(Args... args) { tile(args...); }
  static void pack(float* dst, const float* kb, int64_t kstride, int64_t j0, int64_t j1) { pack_keys(dst, kb, kstride, j0, j1); }
};

// attention_prefill.h's attend_rows with this file's tile: q [R, H, M, D], k/v [R, H, N, D], bias or causal (there).
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale, int64_t block_m,
                     int64_t causal_width, int64_t past) {
  return attend_rows<Tile512>(q, k, v, bias, scale, block_m, causal_width, past);
}

// One decode step: for each (row, KV head), the query heads that share it, one token each, over the row's keys
// up to the last one its bias row leaves open. Scores, then exp and sum, then P.V: each a pass over the row's own
// keys read in place (no copy of the ragged buffer, no work past the row's length).
template <int GC>
static void decode_heads(const float* const* qg, const float* kb, int64_t kstride, const float* vb, int64_t vstride,
                         const float* brow, int64_t count, float sc, float* s, float* const* og) {
  __m512 q[GC][4];
  for (int g = 0; g < GC; ++g) for (int c = 0; c < 4; ++c) q[g][c] = _mm512_loadu_ps(qg[g] + 16 * c);
  float mx[GC];
  for (int g = 0; g < GC; ++g) mx[g] = NEG_INF;
  for (int64_t j = 0; j < count; ++j) {
    const float* kr = kb + j * kstride;
    const __m512 k0 = _mm512_loadu_ps(kr), k1 = _mm512_loadu_ps(kr + 16), k2 = _mm512_loadu_ps(kr + 32), k3 = _mm512_loadu_ps(kr + 48);
    const float b = brow[j];
    for (int g = 0; g < GC; ++g) {
      __m512 acc = _mm512_mul_ps(q[g][0], k0);
      acc = _mm512_fmadd_ps(q[g][1], k1, acc); acc = _mm512_fmadd_ps(q[g][2], k2, acc); acc = _mm512_fmadd_ps(q[g][3], k3, acc);
      const float x = _mm512_reduce_add_ps(acc) * sc + b;
      s[g * count + j] = x;
      mx[g] = std::max(mx[g], x);
    }
  }
  float inv[GC];
  for (int g = 0; g < GC; ++g) {
    float* sg = s + g * count;
    if (mx[g] == NEG_INF) { inv[g] = 0.f; for (int64_t j = 0; j < count; ++j) sg[j] = 0.f; continue; }  // zeros, as SDPA
    const __m512 m = _mm512_set1_ps(mx[g]);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < count; j += 16) {
      const __mmask16 mk = lanes((int)std::min<int64_t>(16, count - j));
      const __m512 x = _mm512_maskz_loadu_ps(mk, sg + j);
      const __mmask16 live = mk & _mm512_cmp_ps_mask(x, _mm512_set1_ps(NEG_INF), _CMP_NEQ_OQ);
      const __m512 e = _mm512_maskz_mov_ps(live, exp512(_mm512_sub_ps(x, m)));
      _mm512_mask_storeu_ps(sg + j, mk, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[g] = 1.f / _mm512_reduce_add_ps(sum);
  }
  __m512 o[GC][4];
  for (int g = 0; g < GC; ++g) for (int c = 0; c < 4; ++c) o[g][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < count; ++j) {
    const float* vr = vb + j * vstride;
    const __m512 v0 = _mm512_loadu_ps(vr), v1 = _mm512_loadu_ps(vr + 16), v2 = _mm512_loadu_ps(vr + 32), v3 = _mm512_loadu_ps(vr + 48);
    for (int g = 0; g < GC; ++g) {
      const __m512 p = _mm512_set1_ps(s[g * count + j]);
      o[g][0] = _mm512_fmadd_ps(p, v0, o[g][0]); o[g][1] = _mm512_fmadd_ps(p, v1, o[g][1]);
      o[g][2] = _mm512_fmadd_ps(p, v2, o[g][2]); o[g][3] = _mm512_fmadd_ps(p, v3, o[g][3]);
    }
  }
  for (int g = 0; g < GC; ++g) {
    const __m512 f = _mm512_set1_ps(inv[g]);
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(og[g] + 16 * c, _mm512_mul_ps(o[g][c], f));
  }
}

template <int GC>
struct DecodeHeads {
  template <typename... Args>
  static void run(Args... args) { decode_heads<GC>(args...); }
};

// q [R, H, G, D], k/v [R, H, N, D] (any strides but the last), bias [R, 1, 1, N] additive (0 / -inf): attention_decode.h.
torch::Tensor decode(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale) {
  return decode_rows<DecodeHeads>(q, k, v, bias, scale);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attend", &attend);
  m.def("decode", &decode);
}
