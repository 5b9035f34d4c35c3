// A narrow forward's elementwise steps (rotary, RMSNorm, residual add + RMSNorm, SiLU x up) as one C++ loop each,
// float32, AVX2 + FMA, on the calling thread. Built at model load by cache_actors/engine/pointwise_kernel.py; why
// and what it measured: that module's docstring. Same arguments and results as fused_pointwise.py's functions.
#include <torch/extension.h>
#include <immintrin.h>
#include "simd_avx2.h"
#include <cmath>

static void check_rows(const torch::Tensor& x, const char* what) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.dim() == 2 && x.stride(1) == 1, what, ": float32 [tokens, n], rows contiguous");
}

// One row: out = x * rsqrt(mean(x^2) + eps) * w.
static inline void norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) { const __m256 v = _mm256_loadu_ps(x + i); acc = _mm256_fmadd_ps(v, v, acc); }
  float ss = hsum(acc);
  for (; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.f / std::sqrt(ss / (float)n + eps);
  const __m256 vinv = _mm256_set1_ps(inv);
  for (i = 0; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv), _mm256_loadu_ps(w + i)));
  for (; i < n; ++i) out[i] = x[i] * inv * w[i];
}

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  check_rows(x, "rms_norm x");
  TORCH_CHECK(w.is_contiguous() && w.numel() == x.size(1), "rms_norm weight [n]");
  auto out = torch::empty({x.size(0), x.size(1)}, x.options());
  const float* xp = x.data_ptr<float>(); const float* wp = w.data_ptr<float>(); float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < x.size(0); ++t) norm_row(xp + t * x.stride(0), wp, op + t * x.size(1), x.size(1), (float)eps);
  return out;
}

// (x + r, RMSNorm of it): a decoder layer's residual add and the next norm in one pass.
std::tuple<torch::Tensor, torch::Tensor> add_rms_norm(torch::Tensor x, torch::Tensor r, torch::Tensor w, double eps) {
  check_rows(x, "add_rms_norm x");
  check_rows(r, "add_rms_norm residual");
  TORCH_CHECK(r.size(0) == x.size(0) && r.size(1) == x.size(1), "add_rms_norm: x and residual differ in shape");
  TORCH_CHECK(w.is_contiguous() && w.numel() == x.size(1), "add_rms_norm weight [n]");
  const int64_t T = x.size(0), n = x.size(1);
  auto sum = torch::empty({T, n}, x.options());
  auto out = torch::empty({T, n}, x.options());
  const float* xp = x.data_ptr<float>(); const float* rp = r.data_ptr<float>(); const float* wp = w.data_ptr<float>();
  float* sp = sum.data_ptr<float>(); float* op = out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* xr = xp + t * x.stride(0); const float* rr = rp + t * r.stride(0); float* sr = sp + t * n;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(sr + i, _mm256_add_ps(_mm256_loadu_ps(xr + i), _mm256_loadu_ps(rr + i)));
    for (; i < n; ++i) sr[i] = xr[i] + rr[i];
    norm_row(sr, wp, op + t * n, n, (float)eps);
  }
  return {sum, out};
}

// Llama's rotary: out = qk * cos + rotate_half(qk) * sin, qk [T, heads, dim] (any token and head strides), cos/sin
// [T, 1, dim]; rotate_half(v) = cat(-v[half:], v[:half]).
torch::Tensor rotary(torch::Tensor qk, torch::Tensor cos, torch::Tensor sin, int64_t half) {
  TORCH_CHECK(qk.scalar_type() == torch::kFloat32 && qk.dim() == 3 && qk.stride(2) == 1, "rotary qk: float32 [T, heads, dim]");
  TORCH_CHECK(cos.dim() == 3 && sin.dim() == 3 && cos.stride(2) == 1 && sin.stride(2) == 1, "rotary cos/sin [T, 1, dim]");
  const int64_t T = qk.size(0), H = qk.size(1), dim = qk.size(2);
  TORCH_CHECK(2 * half == dim && cos.size(0) == T && cos.size(2) == dim && sin.size(0) == T && sin.size(2) == dim, "rotary shapes");
  auto out = torch::empty({T, H, dim}, qk.options());
  const float* qp = qk.data_ptr<float>(); const float* cp = cos.data_ptr<float>(); const float* snp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cp + t * cos.stride(0); const float* s = snp + t * sin.stride(0);
    for (int64_t h = 0; h < H; ++h) {
      const float* x = qp + t * qk.stride(0) + h * qk.stride(1);
      float* o = op + (t * H + h) * dim;
      int64_t i = 0;
      for (; i + 8 <= half; i += 8) {
        const __m256 lo = _mm256_loadu_ps(x + i), hi = _mm256_loadu_ps(x + half + i);
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(lo, _mm256_loadu_ps(c + i), _mm256_mul_ps(_mm256_xor_ps(hi, sign), _mm256_loadu_ps(s + i))));
        _mm256_storeu_ps(o + half + i, _mm256_fmadd_ps(hi, _mm256_loadu_ps(c + half + i), _mm256_mul_ps(lo, _mm256_loadu_ps(s + half + i))));
      }
      for (; i < half; ++i) {
        o[i] = x[i] * c[i] + (-x[half + i]) * s[i];
        o[half + i] = x[half + i] * c[half + i] + x[i] * s[half + i];
      }
    }
  }
  return out;
}

// SiLU of the gate half times the up half of a fused gate|up product [T, 2 * inner].
torch::Tensor silu_mul(torch::Tensor gate_up) {
  check_rows(gate_up, "silu_mul");
  const int64_t T = gate_up.size(0), inner = gate_up.size(1) / 2;
  auto out = torch::empty({T, inner}, gate_up.options());
  const float* gp = gate_up.data_ptr<float>(); float* op = out.data_ptr<float>();
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  for (int64_t t = 0; t < T; ++t) {
    const float* g = gp + t * gate_up.stride(0); const float* u = g + inner; float* o = op + t * inner;
    int64_t i = 0;
    for (; i + 8 <= inner; i += 8) {
      const __m256 gv = _mm256_loadu_ps(g + i);
      const __m256 silu = _mm256_div_ps(gv, _mm256_add_ps(one, exp256(_mm256_xor_ps(gv, sign))));
      _mm256_storeu_ps(o + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    for (; i < inner; ++i) o[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &rms_norm);
  m.def("add_rms_norm", &add_rms_norm);
  m.def("rotary", &rotary);
  m.def("silu_mul", &silu_mul);
}
