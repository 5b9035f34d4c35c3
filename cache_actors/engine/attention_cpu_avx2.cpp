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
#include <cmath>
#include <limits>
#include <vector>

constexpr int D = 64;
constexpr int LANES = 8;
static const float NEG_INF = -std::numeric_limits<float>::infinity();

static inline __m256 exp256(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  x = _mm256_max_ps(_mm256_min_ps(x, hi), lo);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // 2^n from the exponent bits: n is within [-126, 128) after the clamp above.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
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

// q [R, H, G, D] (the G query heads of each KV head, one token each), k/v [R, H, N, D] (any strides but the last),
// bias [R, 1, 1, N] additive (0 / -inf). Out [R, H, G, D]. Row r reads keys 0..(its last key with a finite bias).
torch::Tensor decode(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale) {
  const int64_t R = q.size(0), H = q.size(1), G = q.size(2), N = k.size(2);
  TORCH_CHECK(q.size(3) == D && k.size(3) == D && v.size(3) == D, "head dim 64 only");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1 && bias.stride(3) == 1, "last dim contiguous");
  TORCH_CHECK(bias.dim() == 4 && bias.size(0) == R && bias.size(3) == N, "bias [R, 1, 1, N]");
  auto out = torch::empty({R, H, G, D}, q.options());
  const float* qp = q.data_ptr<float>(); const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
  const float* bp = bias.data_ptr<float>(); float* op = out.data_ptr<float>();
  const auto qs = q.strides(); const auto ks = k.strides(); const auto vs = v.strides();
  const int64_t bs0 = bias.stride(0);
  std::vector<int64_t> counts(R);
  for (int64_t r = 0; r < R; ++r) {
    int64_t last = N - 1;
    const float* br = bp + r * bs0;
    while (last >= 0 && br[last] == NEG_INF) --last;
    counts[r] = last + 1;
  }
  const float sc = (float)scale;
  at::parallel_for(0, R * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s;
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / H, h = t % H, count = counts[r];
      const float* kb = kp + r * ks[0] + h * ks[1];
      const float* vb = vp + r * vs[0] + h * vs[1];
      const float* br = bp + r * bs0;
      s.resize(std::max<int64_t>(1, 4 * count));
      for (int64_t g0 = 0; g0 < G; g0 += 4) {
        const int gc = (int)std::min<int64_t>(4, G - g0);
        const float* qg[4]; float* og[4];
        for (int g = 0; g < gc; ++g) {
          qg[g] = qp + r * qs[0] + h * qs[1] + (g0 + g) * qs[2];
          og[g] = op + ((r * H + h) * G + g0 + g) * D;
        }
        switch (gc) {
          case 1: decode_heads<1>(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          case 2: decode_heads<2>(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          case 3: decode_heads<3>(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          default: decode_heads<4>(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("decode", &decode);
}
