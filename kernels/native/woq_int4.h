// Weight-only int4 linear, group-wise: y[n] = sum_g sum_{k in g} x[k] * ((u[n, k] - 8) * s[n, g] + z[n, g])
// (+ bias[n]) for float x, with u in [0, 15] (PT2E's 4-bit q in [-8, 7] plus 8) packed two a byte
// and the group's (scale, zero) pair in x's dtype, as torch's int4 CPU GEMM takes them
// (kernels/int4pack.py: the same dequantized weight, so the same numbers within float rounding).
//
// Why: one decode row reads each weight byte once, so the op is memory-bound and half the bytes of
// int8 should take about half the time; torch's `_weight_int4pack_mm_for_cpu` streams a one-row
// weight at 21-30 GB/s where our int8 GEMV reaches 50-57 (docs/PERFORMANCE.md, section 5b). Up to
// woq_gemv::kMaxRows rows (a decode step at a small batch) read the weight once, two rows through
// each widened weight vector (four in the bf16 loop: at 4-16 rows on the LM head ~10 % faster than
// two, AMD EPYC Zen 4); more (a prompt) dequantize it into x's dtype for the float GEMM.
//
// Layout (ours, made by kernels/native.py's `woq_int4_pack`): w4 [N, K / 2] uint8; within each
// run of 32 input channels (16 bytes) byte i holds channel i in its low nibble and channel i + 16
// in its high one, so widened bytes give channels 0-15 (& 15) and 16-31 (>> 4) without a shuffle.
// sz [N, K / group, 2]: each output channel's groups side by side; group a multiple of 32.
//
// How (per row): y[n] = sum_r s[n, g(r)] * sum_{k in run r} x[k] u[n, k] + sum_g (z - 8 s) * xsum[g],
// the group sums of x taken once per call. Per block of four output channels, their run scales
// widened to fp32 first; then per run the dot product of x with the widened nibbles in vector
// registers, times the run's scale into the channel's accumulator. bf16 x on a CPU with
// AVX512-BF16 multiplies bf16 pairs (`vdpbf16ps`: each nibble looked up as the exact bf16 of 0-15,
// x reordered once per call to the order 32 widened bytes give); fp32 x, or no AVX512-BF16, fp32
// multiply-adds on AVX-512 or AVX2; plain C++ else. Threads split N; the weight prefetched ahead
// as in woq_gemv.h.

#pragma once

#include <ATen/Version.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>

#include "woq_gemv.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

namespace woq_int4 {

constexpr int kBlock = 4;           // output channels per inner loop
constexpr int kRun = 32;            // input channels per 16 packed bytes
constexpr int kPrefetchBlocks = woq_gemv::kPrefetchBlocks;  // measured there
constexpr int kMaxRuns = 1024;      // K up to 32768 in one pass (run scales on the stack)
// A nibble u as a bf16 with no lookup: the bits 0x4300 | u are exactly 128 + u (exponent 2^7, u in
// the low mantissa bits), so the bf16 loop sums x * (128 + u) and its offset subtracts 136 s, not 8 s.
constexpr int16_t kMagic = 0x4300;
constexpr float kMagicBias = 128.f;

struct Args {
  const float* x;               // [rows, k] fp32
  const c10::BFloat16* xb;      // [rows, k] bf16 in the bf16 loop's order (`reorder_for_bf16`), or nullptr
  const float* xsum;            // [rows, groups]: sum of each row of x over each group
  const uint8_t* w;             // [n, k / 2]
  const void* sz;               // [n, groups, 2] fp32 or bf16 (sz_bf16)
  const void* bias;             // [n] fp32 or bf16 (bias_bf16), or nullptr
  void* y;                      // [rows, n] fp32 or bf16 (y_bf16)
  int64_t k, n, group, groups;
  bool sz_bf16 = false, bias_bf16 = false, y_bf16 = false;
  int64_t rows = 1;
};

using woq_gemv::kMaxRows;
using woq_gemv::kTileRows;  // IQ_EACH_TILE (woq_gemv.h) walks the rows two at a time, IQ_EACH_TILE4 four

inline float load(const void* p, int64_t i, bool bf16) {
  return bf16 ? float(static_cast<const c10::BFloat16*>(p)[i]) : static_cast<const float*>(p)[i];
}

// Channel j's run scales as fp32 (sc[r] = s[j, g(r)]) and the part of its output for the row whose
// group sums are `xsum` that does not touch the weight: sum_g (z - 8 s) * xsum[g] + bias.
inline float prepare(const Args& a, int64_t j, float* sc, const float* xsum, float shift = 8.f) {
  const int64_t runs_per_group = a.group / kRun;
  float off = 0.f;
  for (int64_t g = 0; g < a.groups; ++g) {
    const int64_t at = (j * a.groups + g) * 2;
    const float s = load(a.sz, at, a.sz_bf16), z = load(a.sz, at + 1, a.sz_bf16);
    for (int64_t r = 0; r < runs_per_group; ++r) sc[g * runs_per_group + r] = s;
    off += (z - shift * s) * xsum[g];
  }
  if (a.bias) off += load(a.bias, j, a.bias_bf16);
  return off;
}

// channels j .. j + kBlock's (scale, zero) pairs toward the cache: a stream beside the weight's,
// fetched as far ahead (an unfetched one stalled the loop on every block)
inline void prefetch_pairs(const Args& a, int64_t j) {
  const int64_t bytes = a.groups * (a.sz_bf16 ? 4 : 8);
  const char* ahead = static_cast<const char*>(a.sz) + std::min(j, a.n - 1) * bytes;
  for (int64_t at = 0; at < kBlock * bytes; at += 64) _mm_prefetch(ahead + at, _MM_HINT_T0);
}

inline float prepare_bf16_g32(const Args& a, int64_t j, float* sc, const float* xsum);

// A block of kBlock channels from j: each one's run scales and, per row, its offset (the bf16 loop
// sums x * (128 + u): its offsets take 136 s, not 8 s), and the pairs of the block 4 * kPrefetchBlocks ahead fetched
inline void start_block(const Args& a, int64_t j, float (&sc)[kBlock][kMaxRuns], float (&off)[kMaxRows][kBlock],
                        bool bf16_loop) {
  const float shift = bf16_loop ? 8.f + kMagicBias : 8.f;
  const bool vector_pairs = bf16_loop && a.group == kRun && a.sz_bf16;  // the bf16 loop's pairs, 16 groups a step
  for (int64_t r = 0; r < a.rows; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b)
      off[r][b] = vector_pairs ? prepare_bf16_g32(a, j + b, sc[b], a.xsum + r * a.groups)
                               : prepare(a, j + b, sc[b], a.xsum + r * a.groups, shift);
  prefetch_pairs(a, j + 4 * kPrefetchBlocks * kBlock);
}

// the block's weight rows kPrefetchBlocks blocks ahead, from byte `at` of each row: one cache line
inline void prefetch_rows(const uint8_t* wr, int64_t row, int64_t at) {
  _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) _mm_prefetch(reinterpret_cast<const char*>(wr + (kPrefetchBlocks * kBlock + b) * row + at), woq_gemv::kPrefetchHint);
}

inline void store(const Args& a, int64_t r, int64_t j, float v) {
  if (a.y_bf16)
    static_cast<c10::BFloat16*>(a.y)[r * a.n + j] = c10::BFloat16(v);
  else
    static_cast<float*>(a.y)[r * a.n + j] = v;
}

inline int nibble(const uint8_t* run, int i) { return i < 16 ? run[i] & 15 : run[i - 16] >> 4; }

inline void block_scalar(const Args& a, int64_t j0, int64_t j1) {
  float sc[kMaxRuns];
  for (int64_t row = 0; row < a.rows; ++row) {
    const float* x = a.x + row * a.k;
    for (int64_t j = j0; j < j1; ++j) {
      const float off = prepare(a, j, sc, a.xsum + row * a.groups);
      const uint8_t* wr = a.w + j * (a.k / 2);
      float sum = 0.f;
      for (int64_t r = 0; r < a.k / kRun; ++r) {
        float part = 0.f;
        for (int i = 0; i < kRun; ++i) part += x[r * kRun + i] * float(nibble(wr + r * 16, i));
        sum += part * sc[r];
      }
      store(a, row, j, sum + off);
    }
  }
}


// x in the order the bf16 loop widens 32 packed bytes (two runs, 64 input channels): low nibbles give channels 0-15 and 32-47, high ones 16-31 and 48-63, so each 64 of x
// become [0-15, 32-47, 16-31, 48-63]; a last lone run keeps its order (16 bytes: low 0-15, high 16-31).
inline void reorder_for_bf16(const c10::BFloat16* x, int64_t k, c10::BFloat16* out) {
  const int64_t pairs = k / 64 * 64;
  for (int64_t c = 0; c < pairs; c += 64) {
    std::memcpy(out + c, x + c, 16 * sizeof(c10::BFloat16));
    std::memcpy(out + c + 16, x + c + 32, 16 * sizeof(c10::BFloat16));
    std::memcpy(out + c + 32, x + c + 16, 16 * sizeof(c10::BFloat16));
    std::memcpy(out + c + 48, x + c + 48, 16 * sizeof(c10::BFloat16));
  }
  std::memcpy(out + pairs, x + pairs, size_t(k - pairs) * sizeof(c10::BFloat16));
}

#define IQ_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))


// prepare() for bf16 pairs in groups of 32 (a run each), 16 groups a step: each 32-bit lane of the
// pairs is (s | z << 16), so s and z widen to fp32 by a shift and a mask. The last 8 and 4 groups
// take the same 512-bit steps on a plain 256- or 128-bit load widened with zeros (a 640-channel
// input has 16 + 4 groups: scalar, those 4 cost a third of the GEMV's time on the LM head), the
// last 0-3 scalar. No masked loads: here they stalled the whole loop on an AMD EPYC Zen 5 (the
// 262k x 640 LM head took 6.0 ms on one thread with them, 3.7-4.0 without).
// 16 groups' pairs -> their scales (returned), their offsets (z - 136 s) * xsum added to `off`;
// lanes past the groups loaded are 0 in both `v` and `xsum`: they add 0
IQ_BF16_TARGET inline __m512 pairs_step(__m512i v, __m512 xsum, __m512& off) {
  const __m512 sv = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  const __m512 zv = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u))));
  off = _mm512_fmadd_ps(_mm512_fnmadd_ps(_mm512_set1_ps(8.f + kMagicBias), sv, zv), xsum, off);
  return sv;
}

IQ_BF16_TARGET inline float prepare_bf16_g32(const Args& a, int64_t j, float* sc, const float* xsum) {
  const uint32_t* pairs = static_cast<const uint32_t*>(a.sz) + j * a.groups;
  __m512 off = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 16 <= a.groups; g += 16)
    _mm512_storeu_ps(sc + g, pairs_step(_mm512_loadu_si512(pairs + g), _mm512_loadu_ps(xsum + g), off));
  if (g + 8 <= a.groups) {
    const __m512 sv = pairs_step(_mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pairs + g))),
                                 _mm512_zextps256_ps512(_mm256_loadu_ps(xsum + g)), off);
    _mm256_storeu_ps(sc + g, _mm512_castps512_ps256(sv));
    g += 8;
  }
  if (g + 4 <= a.groups) {
    const __m512 sv = pairs_step(_mm512_zextsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pairs + g))),
                                 _mm512_zextps128_ps512(_mm_loadu_ps(xsum + g)), off);
    _mm_storeu_ps(sc + g, _mm512_castps512_ps128(sv));
    g += 4;
  }
  float rest = a.bias ? load(a.bias, j, a.bias_bf16) : 0.f;
  for (; g < a.groups; ++g) {
    uint32_t s_bits = pairs[g] << 16, z_bits = pairs[g] & 0xFFFF0000u;
    float s, z;
    std::memcpy(&s, &s_bits, 4);
    std::memcpy(&z, &z_bits, 4);
    sc[g] = s;
    rest += (z - (8.f + kMagicBias) * s) * xsum[g];
  }
  return _mm512_reduce_add_ps(off) + rest;
}

template <int R>
IQ_BF16_TARGET inline void tile_bf16(const Args& a, int64_t j, const float (&sc)[kBlock][kMaxRuns],
                                     const float (&off)[kMaxRows][kBlock], int64_t r0) {
  const int64_t k = a.k, row = k / 2, pairs = k / 64 * 64;
  const __m512i low = _mm512_set1_epi16(15), magic = _mm512_set1_epi16(kMagic);
  const __m512i halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const uint8_t* wr = a.w + j * row;
  const c10::BFloat16* xb = a.xb + r0 * k;
  __m512 acc[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < pairs; c += 64) {  // 32 bytes: runs c / 32 and c / 32 + 1
    if (r0 == 0 && (c & 127) == 0) prefetch_rows(wr, row, c / 2);
    __m512bh xa[R], xh[R];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      xa[r] = (__m512bh)_mm512_loadu_si512(xb + r * k + c);
      xh[r] = (__m512bh)_mm512_loadu_si512(xb + r * k + c + 32);
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const __m512i v = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr + b * row + c / 2)));
      const __m512bh wl = (__m512bh)_mm512_ternarylogic_epi32(v, low, magic, 0xEA);  // (v & 15) | magic
      const __m512bh wh = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(v, 4), magic);
      // lanes 0-7 hold run c / 32, lanes 8-15 run c / 32 + 1: each its own scale
      const __m512 s = _mm512_permutexvar_ps(halves, _mm512_castpd_ps(_mm512_castpd128_pd512(
                                                         _mm_load_sd(reinterpret_cast<const double*>(&sc[b][c / 32])))));
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
        acc[r][b] = _mm512_fmadd_ps(_mm512_dpbf16_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), xa[r], wl), xh[r], wh), s, acc[r][b]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
    float sum[kBlock];
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) sum[b] = _mm512_reduce_add_ps(acc[r][b]);
    if (pairs < k) {  // a last lone run: 16 bytes in natural order (low nibbles x[pairs..+16), high the next 16)
      const __m256bh xl = (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + r * k + pairs));
      const __m256bh xh = (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb + r * k + pairs + 16));
      _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
        const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + b * row + pairs / 2)));
        const __m256bh wl = (__m256bh)_mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi16(15)), _mm256_set1_epi16(kMagic));
        const __m256bh wh = (__m256bh)_mm256_or_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi16(kMagic));
        const __m256 part = _mm256_dpbf16_ps(_mm256_dpbf16_ps(_mm256_setzero_ps(), xl, wl), xh, wh);
        sum[b] += woq_gemv::hsum256(part) * sc[b][pairs / 32];
      }
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) store(a, r0 + r, j + b, sum[b] + off[r0 + r][b]);
  }
}

IQ_BF16_TARGET inline void block_bf16(const Args& a, int64_t j0, int64_t j1) {
  float sc[kBlock][kMaxRuns], off[kMaxRows][kBlock];
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    start_block(a, j, sc, off, true);
    IQ_EACH_TILE4(tile_bf16, j, sc, off);
  }
  block_scalar(a, j, j1);
}

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void tile_avx512(
    const Args& a, int64_t j, const float (&sc)[kBlock][kMaxRuns], const float (&off)[kMaxRows][kBlock], int64_t r0) {
  const int64_t k = a.k, row = k / 2;
  const __m512i low = _mm512_set1_epi32(15);
  const uint8_t* wr = a.w + j * row;
  const float* x = a.x + r0 * k;
  __m512 acc[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = _mm512_setzero_ps();
  for (int64_t c = 0; c < k; c += kRun) {
    if (r0 == 0 && (c & 127) == 0) prefetch_rows(wr, row, c / 2);
    __m512 x0[R], x1[R];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
      x0[r] = _mm512_loadu_ps(x + r * k + c);
      x1[r] = _mm512_loadu_ps(x + r * k + c + 16);
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + b * row + c / 2)));
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, low)), hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
      const __m512 s = _mm512_set1_ps(sc[b][c / kRun]);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
        acc[r][b] = _mm512_fmadd_ps(_mm512_fmadd_ps(hi, x1[r], _mm512_mul_ps(lo, x0[r])), s, acc[r][b]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) store(a, r0 + r, j + b, _mm512_reduce_add_ps(acc[r][b]) + off[r0 + r][b]);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void block_avx512(const Args& a, int64_t j0, int64_t j1) {
  float sc[kBlock][kMaxRuns], off[kMaxRows][kBlock];
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    start_block(a, j, sc, off, false);
    IQ_EACH_TILE(tile_avx512, j, sc, off);
  }
  block_scalar(a, j, j1);
}

// 8 packed bytes at a time: channels c+h .. c+h+7 (low nibbles) and c+h+16 .. c+h+23 (high), h = 0, 8
template <int R>
__attribute__((target("avx2,fma"))) inline void tile_avx2(
    const Args& a, int64_t j, const float (&sc)[kBlock][kMaxRuns], const float (&off)[kMaxRows][kBlock], int64_t r0) {
  const int64_t k = a.k, row = k / 2;
  const __m256i low = _mm256_set1_epi32(15);
  const uint8_t* wr = a.w + j * row;
  const float* x = a.x + r0 * k;
  __m256 acc[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = _mm256_setzero_ps();
  for (int64_t c = 0; c < k; c += kRun) {
    if (r0 == 0 && (c & 127) == 0) prefetch_rows(wr, row, c / 2);
    for (int h = 0; h < 16; h += 8) {
      __m256 x0[R], x1[R];
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) {
        x0[r] = _mm256_loadu_ps(x + r * k + c + h);
        x1[r] = _mm256_loadu_ps(x + r * k + c + h + 16);
      }
      _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
        int64_t eight;
        std::memcpy(&eight, wr + b * row + c / 2 + h, 8);
        const __m256i v = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(eight));
        const __m256 lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, low)), hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
        const __m256 s = _mm256_set1_ps(sc[b][c / kRun]);
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
          acc[r][b] = _mm256_fmadd_ps(_mm256_fmadd_ps(hi, x1[r], _mm256_mul_ps(lo, x0[r])), s, acc[r][b]);
      }
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) store(a, r0 + r, j + b, woq_gemv::hsum256(acc[r][b]) + off[r0 + r][b]);
}

__attribute__((target("avx2,fma"))) inline void block_avx2(const Args& a, int64_t j0, int64_t j1) {
  float sc[kBlock][kMaxRuns], off[kMaxRows][kBlock];
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    start_block(a, j, sc, off, false);
    IQ_EACH_TILE(tile_avx2, j, sc, off);
  }
  block_scalar(a, j, j1);
}

// The widest loop this CPU runs and torch's capability allows (as woq_gemv.h picks its own): the
// bf16 pair loop only for bf16 x (`bf16_x`), where the CPU has AVX512-BF16.
using Block = void (*)(const Args&, int64_t, int64_t);
inline Block pick(bool bf16_x) {
  const std::string cap = at::get_cpu_capability();
  __builtin_cpu_init();
  const bool avx512 = cap == "AVX512" && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl");
  if (avx512 && bf16_x && __builtin_cpu_supports("avx512bf16")) return block_bf16;
  if (avx512) return block_avx512;
  if ((cap == "AVX512" || cap == "AVX2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return block_avx2;
  return block_scalar;
}

inline const char* name(Block b) {
  return b == block_bf16 ? "avx512_bf16" : b == block_avx512 ? "avx512" : b == block_avx2 ? "avx2" : "scalar";
}

// y = the int4 linear of every row (up to kMaxRows) over every output channel, threads splitting N
inline void run(const Args& a, bool bf16_x) {
  static const Block fp32_block = pick(false), bf16_block = pick(true);
  const Block block = bf16_x && a.xb ? bf16_block : fp32_block;
  const int64_t blocks = (a.n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) { block(a, b0 * kBlock, std::min(b1 * kBlock, a.n)); });
}

// One weight row as floats: u * s + (z - 8 s) per group, in fp32, written as fp32 or rounded to bf16
// (to nearest even, as c10::BFloat16 rounds) into `out`.
inline void dequantize_row_plain(const uint8_t* wr, const void* sz, bool sz_bf16, int64_t k, int64_t group,
                                 float* f32, c10::BFloat16* bf16) {
  for (int64_t r = 0; r < k; r += kRun) {
    const int64_t at = r / group * 2;
    const float s = load(sz, at, sz_bf16), c = load(sz, at + 1, sz_bf16) - 8.f * s;
    for (int i = 0; i < kRun; ++i) {
      const float v = float(nibble(wr + r / 2, i)) * s + c;
      if (bf16) bf16[r + i] = c10::BFloat16(v); else f32[r + i] = v;
    }
  }
}

using woq_gemv::store16;

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void dequantize_row_avx512(
    const uint8_t* wr, const void* sz, bool sz_bf16, int64_t k, int64_t group, float* f32, c10::BFloat16* bf16) {
  const __m512i low = _mm512_set1_epi32(15);
  for (int64_t r = 0; r < k; r += kRun) {
    const int64_t at = r / group * 2;
    const float s = load(sz, at, sz_bf16), c = load(sz, at + 1, sz_bf16) - 8.f * s;
    const __m512 sv = _mm512_set1_ps(s), cv = _mm512_set1_ps(c);
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + r / 2)));
    store16(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, low)), sv, cv), f32 ? f32 + r : nullptr,
            bf16 ? bf16 + r : nullptr);
    store16(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), sv, cv), f32 ? f32 + r + 16 : nullptr,
            bf16 ? bf16 + r + 16 : nullptr);
  }
}

// One row's x (fp32 or bf16) as fp32 into `xf` and its sum over each group into `xsum`: what the
// one-row loops read besides the weight (a 2048-input row took ~5 us scalar, per call).
inline void widen_x_plain(const void* x, bool bf16, int64_t k, int64_t group, float* xf, float* xsum) {
  for (int64_t g = 0; g < k / group; ++g) {
    float sum = 0.f;
    for (int64_t i = g * group; i < (g + 1) * group; ++i) sum += xf[i] = load(x, i, bf16);
    xsum[g] = sum;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void widen_x_avx512(const void* x, bool bf16, int64_t k,
                                                                              int64_t group, float* xf, float* xsum) {
  for (int64_t g = 0; g < k / group; ++g) {  // a group is whole runs of 32: 16 lanes a step
    __m512 sum = _mm512_setzero_ps();
    for (int64_t i = g * group; i < (g + 1) * group; i += 16) {
      const __m512 v = bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                  reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i))), 16))
                            : _mm512_loadu_ps(static_cast<const float*>(x) + i);
      _mm512_storeu_ps(xf + i, v);
      sum = _mm512_add_ps(sum, v);
    }
    xsum[g] = _mm512_reduce_add_ps(sum);
  }
}

inline void widen_x(const void* x, bool bf16, int64_t k, int64_t group, float* xf, float* xsum) {
  static const bool avx512 = pick(false) == block_avx512;
  (avx512 ? widen_x_avx512 : widen_x_plain)(x, bf16, k, group, xf, xsum);
}

// The weight as floats [n, k] (fp32, or bf16: out_bf16) for a prompt's rows to multiply with the
// float GEMM. Threads split N.
inline void dequantize(const uint8_t* w, const void* sz, bool sz_bf16, int64_t n, int64_t k, int64_t group,
                       void* out, bool out_bf16) {
  static const bool avx512 = pick(false) == block_avx512;
  const int64_t groups = k / group;
  at::parallel_for(0, n, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const void* szj = static_cast<const char*>(sz) + j * groups * 2 * (sz_bf16 ? 2 : 4);
      float* f32 = out_bf16 ? nullptr : static_cast<float*>(out) + j * k;
      c10::BFloat16* bf16 = out_bf16 ? static_cast<c10::BFloat16*>(out) + j * k : nullptr;
      if (avx512)
        dequantize_row_avx512(w + j * (k / 2), szj, sz_bf16, k, group, f32, bf16);
      else
        dequantize_row_plain(w + j * (k / 2), szj, sz_bf16, k, group, f32, bf16);
    }
  });
}

}  // namespace woq_int4
