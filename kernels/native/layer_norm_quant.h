// Layer norm over the last dim of a float32 [rows, n] tensor, quantized on the way out:
//   mean = sum(x) / n, var = sum((x - mean)^2) / n, rstd = 1 / sqrt(var + eps),
//   y = (x - mean) * rstd * w + b           (float32; written only when someone reads it)
//   q = clamp(round_half_even(y * inv_scale) + zero_point, qmin, qmax)   (uint8 or int8)
// the same steps, in the same order, as Inductor's two-step lowering of the decomposed layer norm
// followed by `quantize_per_tensor` (inv_scale = 1 / scale rounded to float, as there).
//
// Why: Inductor's C++ code for that pair walks the whole tensor five times, one `omp for` per
// step (sum, mean, variance, normalize, quantize): 145-210 us at BERT-base bs8's 1024 x 768 on
// two cores, ATen's layer norm alone 90 us. One row is 3 KB, so here each row is read from memory
// once and the three steps run on it while it sits in L1 (docs/ARCHITECTURE.md, section 8).
//
// Sums run in another order than Inductor's (per-lane partial sums of another width), so y differs
// from its result by float rounding, and q by at most one step where y sits on a rounding edge.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace norm_quant {

struct Args {
  const float* x;   // [rows, n], rows contiguous
  const float* w;   // [n]
  const float* b;   // [n]
  float* y;         // [rows, n] or nullptr: the float output is not wanted
  void* q;          // [rows, n] uint8 or int8
  bool q_signed;
  int64_t rows, n;
  float eps, inv_scale;
  int64_t zero_point, qmin, qmax;
};

// Round half to even for |v| < 2^22 in the default rounding mode (2^23 + 2^22 added and taken
// away); larger values stay far beyond any int8 range and clamp the same.
constexpr float kRound = 12582912.f;

// One row; plain loops the compiler vectorizes for the ISA of the function it is inlined into.
// `y` is the row's float output (the caller's scratch row when nobody reads it).
template <typename Q>
__attribute__((always_inline)) inline void row(const Args& a, int64_t r, float* __restrict y) {
  const float* __restrict x = a.x + r * a.n;
  const float* __restrict w = a.w;
  const float* __restrict b = a.b;
  Q* __restrict q = static_cast<Q*>(a.q) + r * a.n;
  const int64_t n = a.n;
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += x[i];
  const float mean = sum / float(n);
  float sq = 0.f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < n; ++i) sq += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.f / std::sqrt(sq / float(n) + a.eps);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = (x[i] - mean) * rstd * w[i] + b[i];
  const float lo = float(a.qmin), hi = float(a.qmax), zp = float(a.zero_point), inv = a.inv_scale;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float t = ((y[i] * inv + kRound) - kRound) + zp;
    t = t < lo ? lo : t;
    t = t > hi ? hi : t;
    q[i] = Q(int32_t(t));
  }
}

template <typename Q>
__attribute__((always_inline)) inline void rows_body(const Args& a, int64_t r0, int64_t r1) {
  std::vector<float> scratch(a.y ? 0 : a.n);
  for (int64_t r = r0; r < r1; ++r) row<Q>(a, r, a.y ? a.y + r * a.n : scratch.data());
}

template <typename Q>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"), flatten)) void rows_avx512(const Args& a, int64_t r0,
                                                                                      int64_t r1) {
  rows_body<Q>(a, r0, r1);
}

template <typename Q>
__attribute__((target("avx2,fma"), flatten)) void rows_avx2(const Args& a, int64_t r0, int64_t r1) {
  rows_body<Q>(a, r0, r1);
}

template <typename Q>
__attribute__((flatten)) void rows_plain(const Args& a, int64_t r0, int64_t r1) {
  rows_body<Q>(a, r0, r1);
}

// The widest vector code this CPU runs and torch's own CPU dispatch uses (ATEN_CPU_CAPABILITY
// caps both, as in woq_gemv.h).
enum class Level { plain, avx2, avx512 };
inline Level level() {
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  if (cap == "AVX512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Level::avx512;
  if ((cap == "AVX512" || cap == "AVX2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return Level::avx2;
  return Level::plain;
}

inline const char* name(Level l) { return l == Level::avx512 ? "avx512" : l == Level::avx2 ? "avx2" : "plain"; }

template <typename Q>
void run_typed(const Args& a) {
  using Rows = void (*)(const Args&, int64_t, int64_t);
  static const Rows rows = [] {
    switch (level()) {
      case Level::avx512: return Rows(rows_avx512<Q>);
      case Level::avx2: return Rows(rows_avx2<Q>);
      default: return Rows(rows_plain<Q>);
    }
  }();
  // a row is ~3n bytes of traffic: rows in blocks of 64 KB or more per task
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(a.n * 4, 1));
  at::parallel_for(0, a.rows, grain, [&](int64_t r0, int64_t r1) { rows(a, r0, r1); });
}

inline void run(const Args& a) {
  if (a.q_signed)
    run_typed<int8_t>(a);
  else
    run_typed<uint8_t>(a);
}

}  // namespace norm_quant
