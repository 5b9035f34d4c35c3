// The decode step's walk over a ragged batch, shared by attention_cpu.cpp (AVX-512) and attention_cpu_avx2.cpp
// (AVX2): each (row, KV head) in parallel, its query heads in groups of up to 4, each group computed by the
// includer's `Heads<GC>::run(qg, kb, kstride, vb, vstride, brow, count, scale, scratch, og)` over the row's
// `count` open keys (scratch holds GC x count floats).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <limits>
#include <vector>

// q [R, H, G, D] (the G query heads of each KV head, one token each), k/v [R, H, N, D] (any strides but the last),
// bias [R, 1, 1, N] additive (0 / -inf). Out [R, H, G, D]. Row r reads keys 0..(its last key with a finite bias).
template <template <int> class Heads>
torch::Tensor decode_rows(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale) {
  constexpr int64_t D = 64;
  const float NEG_INF = -std::numeric_limits<float>::infinity();
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
          case 1: Heads<1>::run(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          case 2: Heads<2>::run(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          case 3: Heads<3>::run(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
          default: Heads<4>::run(qg, kb, ks[2], vb, vs[2], br, count, sc, s.data(), og); break;
        }
      }
    }
  });
  return out;
}
