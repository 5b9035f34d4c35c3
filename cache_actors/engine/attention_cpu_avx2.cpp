// The decode step of attention_cpu.cpp for CPUs with AVX2 and FMA but no AVX-512 (float32, 64-dim heads), built at
// model load by cache_actors/engine/attention_kernel.py. Why it exists and what it measured: that module's docstring.
//
// For each (row, KV head), the query heads that share it, one token each, over the row's keys up to the last one
// its bias row leaves open: scores, then exp and sum, then P.V, each a pass over the row's own keys read in place.
// A 64-float vector is 8 ymm registers here (4 zmm in attention_cpu.cpp), so the query stays in L1 rather than in
// registers, and P.V runs in passes of 16 output floats per query head to keep its accumulators in registers.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include "attention_decode.h"
#include "simd_avx2.h"
#include <cmath>
#include <limits>
#include <vector>

constexpr int D = 64;
constexpr int LANES = 8;
static const float NEG_INF = -std::numeric_limits<float>::infinity();

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
  constexpr int PASS = 16;  // output floats per query head per pass over the keys
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
  m.def("decode", &decode);
}
