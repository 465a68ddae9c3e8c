// Weight-only int8 GEMV: y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]) for a few rows
// of float x (a decode step: 1-4 rows) and a plain int8 [N, K] weight, accumulated in fp32.
//
// Why: at one row a weight-only linear reads each weight byte once and does two flops with it,
// so it should run at memory speed. oneDNN's matmul with weight decompression reached about 9 GB/s
// on an AMD EPYC Zen 4 (Gemma-3-270M's 262k x 640 LM head: ~17 ms), slower than the bf16 GEMV it
// replaces; this loop streams the weight at memory speed (docs/PERFORMANCE.md, section 5).
//
// How: four output channels at a time, each an independent chain of fused multiply-adds over K
// in vector registers (int8 -> int32 -> fp32 in registers), all rows of x per weight load;
// threads split N. AVX-512 or AVX2 by what the CPU has (checked at run time); plain C++ else.
// Sums run in a different order than oneDNN's, so fp32 results differ from it by float rounding.

#pragma once

#include <ATen/Version.h>

#include <immintrin.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <string>

namespace woq_gemv {

constexpr int kMaxRows = 4;
constexpr int kBlock = 4;  // output channels per inner loop

struct Args {
  const float* x;      // [rows, k] fp32, contiguous
  const int8_t* w;     // [n, k] int8, contiguous
  const float* scale;  // [n]
  const float* bias;   // [n] fp32 or nullptr
  float* y;            // [rows, n] fp32
  int64_t rows, k, n;
};

inline void finish(const Args& a, int64_t j, const float* sums /*[rows]*/) {
  for (int64_t m = 0; m < a.rows; ++m)
    a.y[m * a.n + j] = sums[m] * a.scale[j] + (a.bias ? a.bias[j] : 0.f);
}

inline void block_scalar(const Args& a, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; ++j) {
    float sums[kMaxRows] = {0.f, 0.f, 0.f, 0.f};
    const int8_t* wr = a.w + j * a.k;
    for (int64_t m = 0; m < a.rows; ++m)
      for (int64_t i = 0; i < a.k; ++i) sums[m] += a.x[m * a.k + i] * float(wr[i]);
    finish(a, j, sums);
  }
}

// One 16-column step of R rows x kBlock channels (masked: the last K % 16 columns).
template <int R, bool Masked>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline void step_avx512(
    const Args& a, const int8_t* wr, int64_t i, __mmask16 mask, __m512 (&acc)[R][kBlock]) {
  __m512 w[kBlock];
  for (int b = 0; b < kBlock; ++b) {
    const int8_t* p = wr + b * a.k + i;
    const __m128i bytes = Masked ? _mm_maskz_loadu_epi8(mask, p) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    w[b] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
  }
  for (int m = 0; m < R; ++m) {
    const float* xp = a.x + m * a.k + i;
    const __m512 xv = Masked ? _mm512_maskz_loadu_ps(mask, xp) : _mm512_loadu_ps(xp);
    for (int b = 0; b < kBlock; ++b) acc[m][b] = _mm512_fmadd_ps(w[b], xv, acc[m][b]);
  }
}

// R rows of x (a compile-time count, so the accumulators stay in registers), kBlock channels at a
// time; the last K % 16 (or 8) columns in one masked (or scalar) step after the main loop.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void rows_avx512(const Args& a, int64_t j0, int64_t j1) {
  const int64_t k = a.k, full = k / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (k - full)) - 1u);
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    const int8_t* wr = a.w + j * k;
    __m512 acc[R][kBlock];
    for (int m = 0; m < R; ++m)
      for (int b = 0; b < kBlock; ++b) acc[m][b] = _mm512_setzero_ps();
    for (int64_t i = 0; i < full; i += 16) {
      if ((i & 63) == 0)  // the block after next, a cache line per row: DRAM streams stay busy
        for (int b = 0; b < kBlock; ++b) _mm_prefetch(reinterpret_cast<const char*>(wr + (2 * kBlock + b) * k + i), _MM_HINT_T0);
      step_avx512<R, false>(a, wr, i, 0, acc);
    }
    if (full < k) step_avx512<R, true>(a, wr, full, tail, acc);
    for (int b = 0; b < kBlock; ++b) {
      float sums[kMaxRows];
      for (int m = 0; m < R; ++m) sums[m] = _mm512_reduce_add_ps(acc[m][b]);
      finish(a, j + b, sums);
    }
  }
  block_scalar(a, j, j1);
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const Args& a, int64_t j0, int64_t j1) {
  const int64_t k = a.k, full = k / 8 * 8;
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    const int8_t* wr = a.w + j * k;
    __m256 acc[R][kBlock];
    for (int m = 0; m < R; ++m)
      for (int b = 0; b < kBlock; ++b) acc[m][b] = _mm256_setzero_ps();
    for (int64_t i = 0; i < full; i += 8) {
      __m256 w[kBlock];
      for (int b = 0; b < kBlock; ++b) {
        int64_t eight;
        std::memcpy(&eight, wr + b * k + i, 8);
        w[b] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight)));
      }
      for (int m = 0; m < R; ++m) {
        const __m256 xv = _mm256_loadu_ps(a.x + m * k + i);
        for (int b = 0; b < kBlock; ++b) acc[m][b] = _mm256_fmadd_ps(w[b], xv, acc[m][b]);
      }
    }
    for (int b = 0; b < kBlock; ++b) {
      float sums[kMaxRows];
      for (int m = 0; m < R; ++m) {
        sums[m] = hsum256(acc[m][b]);
        for (int64_t i = full; i < k; ++i) sums[m] += a.x[m * k + i] * float(wr[b * k + i]);
      }
      finish(a, j + b, sums);
    }
  }
  block_scalar(a, j, j1);
}

inline void block_avx512(const Args& a, int64_t j0, int64_t j1) {
  switch (a.rows) {
    case 1: return rows_avx512<1>(a, j0, j1);
    case 2: return rows_avx512<2>(a, j0, j1);
    case 3: return rows_avx512<3>(a, j0, j1);
    default: return rows_avx512<4>(a, j0, j1);
  }
}

inline void block_avx2(const Args& a, int64_t j0, int64_t j1) {
  switch (a.rows) {
    case 1: return rows_avx2<1>(a, j0, j1);
    case 2: return rows_avx2<2>(a, j0, j1);
    case 3: return rows_avx2<3>(a, j0, j1);
    default: return rows_avx2<4>(a, j0, j1);
  }
}

// The widest vector code this CPU runs and torch's own CPU dispatch uses (ATEN_CPU_CAPABILITY
// caps both, as when a test plays an AVX2-only CPU on a newer one).
using Block = void (*)(const Args&, int64_t, int64_t);
inline Block pick() {
  const std::string cap = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT", ...
  __builtin_cpu_init();
  if (cap == "AVX512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return block_avx512;
  if ((cap == "AVX512" || cap == "AVX2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return block_avx2;
  return block_scalar;
}

inline const char* name(Block b) {
  return b == block_avx512 ? "avx512" : b == block_avx2 ? "avx2" : "scalar";
}

// y = x w^T * scale (+ bias) over every output channel, threads splitting N.
inline void run(const Args& a) {
  static const Block block = pick();
  const int64_t blocks = (a.n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) { block(a, b0 * kBlock, std::min(b1 * kBlock, a.n)); });
}

}  // namespace woq_gemv
