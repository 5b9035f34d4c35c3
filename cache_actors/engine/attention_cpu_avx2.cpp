// attention_cpu.cpp for CPUs with AVX2 and FMA but no AVX-512 (float32, 64-dim heads): the prefill's tile and the
// decode step, built at model load by cache_actors/engine/attention_kernel.py. Why it exists and what it measured:
// that module's docstring.
//
// A 64-float vector is 8 ymm registers here (4 zmm in attention_cpu.cpp) and there are 16 of them, not 32, so no
// tile keeps a whole row's scores or output in registers: the prefill's tile computes its 6 rows' scores in passes of
// 16 keys and their P.V in passes of 16 output floats (8 accumulators each, the rest of the row in L1), with the
// softmax between the two over the scores in L1. The decode step: for each (row, KV head), the query heads that
// share it, one token each, over the row's keys up to the last one its bias row leaves open: scores, then exp and
// sum, then P.V, each a pass over the row's own keys read in place, P.V in passes of 16 output floats per head.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "attention_decode.h"
#include "attention_prefill.h"
#include "simd_avx2.h"
#include <cmath>
#include <limits>
#include <vector>

constexpr int D = 64;
constexpr int LANES = 8;
constexpr int BN = PREFILL_BN;
constexpr int MR = 6;  // 6 rows x 16 keys (or output floats): 12 accumulators of the 16 registers
constexpr int PASS = 16;  // keys per pass of the scores, output floats per pass of P.V
static const float NEG_INF = -std::numeric_limits<float>::infinity();

static inline float hmax(__m256 v) {
  const __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(t, _mm_movehdup_ps(t)));
}

// c[a] += x[a * xstride] * (v0 | v1) for each of the MR rows: the rank-1 update both of the tile's products are made of
// (scores: a query dim times 16 keys' values of it; P.V: a probability times 16 floats of its key's value row).
__attribute__((always_inline)) static inline void rank1(__m256 (&c)[MR][2], const float* x, int xstride, __m256 v0, __m256 v1) {
#pragma GCC unroll 6
  for (int a = 0; a < MR; ++a) {
    const __m256 xa = _mm256_broadcast_ss(x + a * xstride);
    c[a][0] = _mm256_fmadd_ps(xa, v0, c[a][0]); c[a][1] = _mm256_fmadd_ps(xa, v1, c[a][1]);
  }
}

// MR query rows (qt, 64 floats each) against one block of nb <= BN keys (kt: K transposed, row d at kt + d * ldk).
static inline void tile(const float* qt, const float* kt, int64_t ldk, const float* const* brow, const int* limit, int nb,
                        float sc, float* mrow, float* lrow, float* const* orow, float* s, const float* vb, int64_t vstride) {
  int reach = 0;  // keys any of the rows sees: the passes past it (the causal diagonal) are skipped
  for (int a = 0; a < MR; ++a) reach = std::max(reach, limit[a]);
  for (int j0 = 0; j0 < reach; j0 += PASS) {
    __m256 c[MR][2];
#pragma GCC unroll 6
    for (int a = 0; a < MR; ++a) c[a][0] = c[a][1] = _mm256_setzero_ps();
#pragma GCC unroll 4
    for (int d = 0; d < D; ++d) {
      rank1(c, qt + d, D, _mm256_loadu_ps(kt + d * ldk + j0), _mm256_loadu_ps(kt + d * ldk + j0 + LANES));
    }
#pragma GCC unroll 6
    for (int a = 0; a < MR; ++a) {
      _mm256_store_ps(s + a * BN + j0, c[a][0]); _mm256_store_ps(s + a * BN + j0 + LANES, c[a][1]);
    }
  }
  const __m256 vsc = _mm256_set1_ps(sc), ninf = _mm256_set1_ps(NEG_INF);
  const __m256 iota = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f);
  float alpha[MR];
  for (int a = 0; a < MR; ++a) {
    float* sa = s + a * BN;
    const __m256 lim = _mm256_set1_ps((float)limit[a]);
    __m256 mx = ninf;
    for (int j = 0; j < BN; j += LANES) {
      const __m256 keep = _mm256_cmp_ps(_mm256_add_ps(iota, _mm256_set1_ps((float)j)), lim, _CMP_LT_OQ);
      __m256 x = _mm256_mul_ps(_mm256_load_ps(sa + j), vsc);
      if (brow[a]) x = _mm256_add_ps(x, _mm256_maskload_ps(brow[a] + j, _mm256_castps_si256(keep)));
      x = _mm256_blendv_ps(ninf, x, keep);
      _mm256_store_ps(sa + j, x);
      mx = _mm256_max_ps(mx, x);
    }
    const float mold = mrow[a], mnew = std::max(mold, hmax(mx));
    if (mnew == NEG_INF) {  // nothing seen yet: the row's output and sum stay as they are
      alpha[a] = 1.f;
      for (int j = 0; j < BN; j += LANES) _mm256_store_ps(sa + j, _mm256_setzero_ps());
      continue;
    }
    alpha[a] = std::exp(mold - mnew);
    const __m256 vm = _mm256_set1_ps(mnew);
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < BN; j += LANES) {
      const __m256 x = _mm256_load_ps(sa + j);
      const __m256 p = _mm256_and_ps(_mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ), exp256(_mm256_sub_ps(x, vm)));
      _mm256_store_ps(sa + j, p);
      sum = _mm256_add_ps(sum, p);
    }
    lrow[a] = lrow[a] * alpha[a] + hsum(sum);
    mrow[a] = mnew;
  }
  const int count = std::min(nb, reach);  // past every row's limit the probabilities are 0
  for (int c0 = 0; c0 < D; c0 += PASS) {
    __m256 o[MR][2];
#pragma GCC unroll 6
    for (int a = 0; a < MR; ++a) {
      const __m256 va = _mm256_set1_ps(alpha[a]);
      o[a][0] = _mm256_mul_ps(_mm256_loadu_ps(orow[a] + c0), va);
      o[a][1] = _mm256_mul_ps(_mm256_loadu_ps(orow[a] + c0 + LANES), va);
    }
    for (int j = 0; j < count; ++j) {
      const float* vr = vb + j * vstride + c0;
      rank1(o, s + j, BN, _mm256_loadu_ps(vr), _mm256_loadu_ps(vr + LANES));
    }
#pragma GCC unroll 6
    for (int a = 0; a < MR; ++a) {
      _mm256_storeu_ps(orow[a] + c0, o[a][0]); _mm256_storeu_ps(orow[a] + c0 + LANES, o[a][1]);
    }
  }
}

// pack_keys (attention_prefill.h) 8 keys x 8 dims at a time: 8 loads, an in-register transpose, 8 stores.
static inline void pack(float* dst, const float* kb, int64_t kstride, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + LANES <= j1; j += LANES) {
    for (int d = 0; d < D; d += LANES) {
      __m256 r[LANES];
      for (int i = 0; i < LANES; ++i) r[i] = _mm256_loadu_ps(kb + (j + i) * kstride + d);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* o = dst + d * BN + j;
      _mm256_storeu_ps(o + 0 * BN, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(o + 1 * BN, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(o + 2 * BN, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(o + 3 * BN, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(o + 4 * BN, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(o + 5 * BN, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(o + 6 * BN, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(o + 7 * BN, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
  }
  pack_keys(dst, kb, kstride, j, j1);
}

struct Tile256 {
  static constexpr int MR = ::MR;
  template <typename... Args>
  static void run(Args... args) { tile(args...); }
  static void pack(float* dst, const float* kb, int64_t kstride, int64_t j0, int64_t j1) { ::pack(dst, kb, kstride, j0, j1); }
};

// attention_prefill.h's attend_rows with this file's tile (shapes, bias and causal mode: there).
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale, int64_t block_m,
                     int64_t causal_width, int64_t past) {
  return attend_rows<Tile256>(q, k, v, bias, scale, block_m, causal_width, past);
}

template <int GC>
static void decode_heads(const float* const* qg, const float* kb, int64_t kstride, const float* vb, int64_t vstride,
                         const float* brow, int64_t count, float sc, float* s, float* const* og) {
  float mx[GC];
  for (int g = 0; g < GC; ++g) mx[g] = NEG_INF;
  for (int64_t j = 0; j < count; ++j) {
    const float* kr = kb + j * kstride;
    __m256 acc[GC];
    for (int g = 0; g < GC; ++g) acc[g] = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int c = 0; c < D; c += LANES) {
      const __m256 kc = _mm256_loadu_ps(kr + c);
      for (int g = 0; g < GC; ++g) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qg[g] + c), kc, acc[g]);
    }
    const float b = brow[j];
    for (int g = 0; g < GC; ++g) {
      const float x = hsum(acc[g]) * sc + b;
      s[g * count + j] = x;
      mx[g] = std::max(mx[g], x);
    }
  }
  float inv[GC];
  const __m256 ninf = _mm256_set1_ps(NEG_INF);
  for (int g = 0; g < GC; ++g) {
    float* sg = s + g * count;
    if (mx[g] == NEG_INF) { inv[g] = 0.f; for (int64_t j = 0; j < count; ++j) sg[j] = 0.f; continue; }  // zeros, as SDPA
    const __m256 m = _mm256_set1_ps(mx[g]);
    __m256 sum = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + LANES <= count; j += LANES) {
      const __m256 x = _mm256_loadu_ps(sg + j);
      const __m256 e = _mm256_and_ps(_mm256_cmp_ps(x, ninf, _CMP_NEQ_OQ), exp256(_mm256_sub_ps(x, m)));
      _mm256_storeu_ps(sg + j, e);
      sum = _mm256_add_ps(sum, e);
    }
    float total = hsum(sum);
    for (; j < count; ++j) {
      const float e = sg[j] == NEG_INF ? 0.f : std::exp(sg[j] - mx[g]);
      sg[j] = e;
      total += e;
    }
    inv[g] = 1.f / total;
  }
  for (int c0 = 0; c0 < D; c0 += PASS) {
    __m256 o[GC][2];
    for (int g = 0; g < GC; ++g) o[g][0] = o[g][1] = _mm256_setzero_ps();
    for (int64_t j = 0; j < count; ++j) {
      const float* vr = vb + j * vstride + c0;
      const __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + LANES);
      for (int g = 0; g < GC; ++g) {
        const __m256 p = _mm256_broadcast_ss(s + g * count + j);
        o[g][0] = _mm256_fmadd_ps(p, v0, o[g][0]); o[g][1] = _mm256_fmadd_ps(p, v1, o[g][1]);
      }
    }
    for (int g = 0; g < GC; ++g) {
      const __m256 f = _mm256_set1_ps(inv[g]);
      _mm256_storeu_ps(og[g] + c0, _mm256_mul_ps(o[g][0], f));
      _mm256_storeu_ps(og[g] + c0 + LANES, _mm256_mul_ps(o[g][1], f));
    }
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
