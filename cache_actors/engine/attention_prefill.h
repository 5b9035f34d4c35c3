// The prefill's walk, shared by attention_cpu.cpp (AVX-512) and attention_cpu_avx2.cpp (AVX2): K transposed in blocks
// of PREFILL_BN keys (below), then each (row, KV head, block of query rows) in parallel, its query rows
// in tiles of Tile::MR against blocks of PREFILL_BN keys, each tile computed by the includer's
// `Tile::run(qt, kt, ldk, brow, limit, nb, scale, mrow, lrow, orow, scratch, vb, vstride)` (and K's blocks transposed
// by its `Tile::pack`, `pack_keys`' signature): the tile's scores over
// the block (key j of query row a counts while j < limit[a], plus brow[a][j] where brow[a] is given), the online
// softmax's running max and sum (mrow, lrow) and its Tile::MR x 64 output rows (orow), unnormalised.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

constexpr int PREFILL_BN = 64;

// Keys j0..j1 of a block into its transposed copy (dst[d * PREFILL_BN + j]), one float at a time: a Tile's `pack`
// where it has none faster.
static inline void pack_keys(float* dst, const float* kb, int64_t kstride, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) { const float* kr = kb + j * kstride; for (int d = 0; d < 64; ++d) dst[d * PREFILL_BN + j] = kr[d]; }
}

// q [R, H, M, D] (M = G * width when query heads are stacked), k/v [R, H, N, D]; bias [R, 1, M, N] additive, or
// causal: query row m (width index m % width) sees keys j <= past + m % width. One of the two, or neither.
template <class Tile>
torch::Tensor attend_rows(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor bias, double scale, int64_t block_m,
                     int64_t causal_width, int64_t past) {
  constexpr int64_t D = 64, BN = PREFILL_BN, MR = Tile::MR;
  const float NEG_INF = -std::numeric_limits<float>::infinity();
  const int64_t R = q.size(0), H = q.size(1), M = q.size(2), N = k.size(2);
  TORCH_CHECK(q.size(3) == D && k.size(3) == D && v.size(3) == D, "head dim 64 only");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "last dim contiguous");
  const bool has_bias = bias.defined() && bias.numel() > 0, causal = causal_width > 0;
  auto out = torch::empty({R, H, M, D}, q.options());
  // K transposed block by block, [R, H, kblocks, D, BN]: a tile reads its block's 64 dims 256 bytes apart. Transposed
  // whole ([R, H, D, N]), a power-of-two N put every dim of a column in one L1 set (6 query rows over 2,002 keys took 1.2
  // ms, as long as over 4,002). Blocks are transposed in parallel (per (row, head), the 3 heads of a one-prompt
  // prefill kept a thread idle); only the padding past N is zeroed.
  const int64_t kblocks = (N + BN - 1) / BN, ldk = BN;
  auto kt_all = torch::empty({R, H, kblocks, D, BN}, q.options());
  const float* qp = q.data_ptr<float>(); const float* kp = k.data_ptr<float>(); const float* vp = v.data_ptr<float>();
  float* ktp = kt_all.data_ptr<float>();
  const auto qs = q.strides(); const auto ks = k.strides(); const auto vs = v.strides();
  at::parallel_for(0, R * H * kblocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t rh = t / kblocks, j0 = (t % kblocks) * BN, j1 = std::min<int64_t>(N, j0 + BN);
      const float* kb = kp + (rh / H) * ks[0] + (rh % H) * ks[1];
      float* dst = ktp + (rh * kblocks + j0 / BN) * D * BN - j0;  // dst[d * BN + j]: key j of this block
      Tile::pack(dst, kb, ks[2], j0, j1);
      if (j1 < j0 + BN) for (int d = 0; d < D; ++d) std::memset(dst + d * BN + j1, 0, (j0 + BN - j1) * sizeof(float));
    }
  });
  // As many blocks of at most block_m rows as that takes, of equal size (whole tiles): 65 new tokens of 3 query heads
  // per KV head are 195 rows, 128 + 67 split unevenly over two threads, 102 + 93 evenly.
  // Counted again after the rounding up to whole tiles, which can leave the last block none of the rows (2,899 rows
  // in 23 blocks of 132: the 23rd would start at 2,904).
  const int64_t wanted = (M + block_m - 1) / block_m;
  const int64_t bm = ((M + wanted - 1) / wanted + MR - 1) / MR * MR, qblocks = (M + bm - 1) / bm;
  const float* bp = has_bias ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  const int64_t bs0 = has_bias ? bias.stride(0) : 0, bs2 = has_bias ? bias.stride(2) : 0;
  TORCH_CHECK(!has_bias || bias.stride(3) == 1, "bias last dim contiguous");
  const float sc = (float)scale;
  at::parallel_for(0, R * H * qblocks, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float s[Tile::MR * PREFILL_BN];
    std::vector<float> acc, mrow, lrow, qbuf;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / (H * qblocks), h = (task / qblocks) % H, m0 = (task % qblocks) * bm;
      const int64_t mcount = std::min(bm, M - m0), padded = (mcount + MR - 1) / MR * MR;
      const float* qb = qp + r * qs[0] + h * qs[1] + m0 * qs[2];
      const float* kt = ktp + (r * H + h) * kblocks * D * BN;
      const float* vb = vp + r * vs[0] + h * vs[1];
      qbuf.assign(padded * D, 0.f); acc.assign(padded * D, 0.f);
      mrow.assign(padded, NEG_INF); lrow.assign(padded, 0.f);
      for (int64_t row = 0; row < mcount; ++row) std::memcpy(qbuf.data() + row * D, qb + row * qs[2], D * sizeof(float));
      for (int64_t i0 = 0; i0 < padded; i0 += MR) {
        int64_t last[Tile::MR]; int64_t reach = 0;
        for (int a = 0; a < MR; ++a) {
          const int64_t row = std::min<int64_t>(i0 + a, mcount - 1);
          last[a] = causal ? past + (m0 + row) % causal_width : N - 1;  // last key this row sees
          reach = std::max(reach, last[a]);
        }
        const int64_t nend = std::min<int64_t>(N, reach + 1);
        float* orow[Tile::MR];
        for (int a = 0; a < MR; ++a) orow[a] = acc.data() + (i0 + a) * D;
        for (int64_t n0 = 0; n0 < nend; n0 += BN) {
          const int nb = (int)std::min<int64_t>(BN, N - n0);
          const float* brow[Tile::MR]; int limit[Tile::MR];
          for (int a = 0; a < MR; ++a) {
            const int64_t row = std::min<int64_t>(i0 + a, mcount - 1);
            brow[a] = has_bias ? bp + r * bs0 + (m0 + row) * bs2 + n0 : nullptr;
            limit[a] = (int)std::max<int64_t>(0, std::min<int64_t>(nb, last[a] - n0 + 1));
          }
          Tile::run(qbuf.data() + i0 * D, kt + n0 * D, ldk, brow, limit, nb, sc, mrow.data() + i0, lrow.data() + i0, orow, s, vb + n0 * vs[2], vs[2]);
        }
      }
      float* ob = op + ((r * H + h) * M + m0) * D;
      for (int64_t row = 0; row < mcount; ++row) {
        const float inv = lrow[row] > 0.f ? 1.f / lrow[row] : 0.f;  // nothing attended: zeros, as SDPA gives
        for (int d = 0; d < D; ++d) ob[row * D + d] = acc[row * D + d] * inv;
      }
    }
  });
  return out;
}
