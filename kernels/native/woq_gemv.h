// Weight-only int8 GEMV: y[r, n] = sum_g scale[n, g] * sum_{k in g} x[r, k] * w[n, k] (+ bias[n])
// for a few rows of float x (a decode step: one row at batch 1, one per sequence at a small batch)
// and a plain int8 [N, K] weight, accumulated in fp32; one scale per output channel (one group of
// K), or one per group of `group` input channels.
//
// Why: at one row a weight-only linear reads each weight byte once and does two flops with it,
// so it should run at memory speed. oneDNN's matmul with weight decompression reached about 9 GB/s
// on an AMD EPYC Zen 4 (Gemma-3-270M's 262k x 640 LM head: ~17 ms), slower than the bf16 GEMV it
// replaces; this loop streams the weight at memory speed (docs/PERFORMANCE.md, section 5). From two
// rows on it is compute-bound; per output channel oneDNN's matmul is as fast or faster there
// (measured 2-4 rows: section 5b), so the op gives it more than one row. With group scales the
// alternative is dequantizing the whole weight every call (the prompt's path): at 4 rows 8x slower
// on the LM head, so up to kMaxRows rows come here. Scales per group (groups of 32-256) keep an
// outlier from coarsening a whole channel's grid: on Gemma-3-270M, KL to the float model 0.0038
// per channel, 0.0015 in groups of 64 (section 5b), for a scale stream of 4 / group of the weight's
// bytes, 2 / group where the scales are fp16 (`scale_f16`: our quantizer rounds them so; widened exactly).
//
// How: four output channels at a time, each two independent chains of fused multiply-adds over K
// (or over one group, then times the group's scale into the channel's sum) in vector registers
// (int8 -> int32 -> fp32 in registers), the weight (and the group scales) prefetched well ahead;
// rows two at a time through each widened weight vector (four at a time measured no faster);
// threads split N. AVX-512 or AVX2 by what the CPU has (checked at run time); plain C++ else.
// bf16 rows with group scales on a CPU with AVX512-BF16 take a loop of their own (bf16 pairs,
// `vdpbf16ps`, four rows a tile: `block_bf16_grouped`): 0.63-0.71x the fp32 loop's time from 4
// rows on the LM head, 0.7-0.88x on a block's linears at any row count, level at one row on the head.
// Sums run in a different order than oneDNN's, so fp32 results differ from it by float rounding;
// each row's in the same order whatever its batch, so a row's result does not depend on it.

#pragma once

#include <ATen/Version.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>
#include <sys/mman.h>

#include <cstdint>
#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>

namespace woq_gemv {

constexpr int kBlock = 4;     // output channels per inner loop
constexpr int kTileRows = 2;  // rows sharing one widened weight block (two rows' accumulators fill the registers)
constexpr int kMaxRows = 16;  // rows through the GEMV; a longer prompt takes the float GEMM (onednn_direct.cpp)

struct Args {
  const float* x;      // [rows, k] fp32, contiguous; null where xb holds the rows
  const int8_t* w;     // [n, k] int8, contiguous
  const float* scale;  // [n] (group 0), else [n, k / group]; null where scale_f16 holds them
  const uint16_t* scale_f16 = nullptr;  // group scales [n, k / group] as fp16 bits (half their bytes)
  const void* bias;    // [n] fp32 or bf16 (bias_bf16), or nullptr
  void* y;             // [rows, n] fp32 or bf16 (y_bf16)
  int64_t k, n;
  bool bias_bf16 = false, y_bf16 = false;
  int64_t group = 0;   // 0: one scale per output channel; else a multiple of 32 dividing k
  int64_t rows = 1;
  const c10::BFloat16* xb = nullptr;  // [rows, k] bf16 rows as they come (group scales, `takes_bf16_rows`)
};

// y[r, j] = sum * scale (+ bias), rounded once to y's dtype: the bf16 bias widened exactly, the fp32
// sum rounded to bf16 at the end (as a bf16 linear rounds its fp32 accumulator). `scale` 1 where
// the group scales are in the sum already.
inline void finish(const Args& a, int64_t r, int64_t j, float sum, float scale) {
  float b = 0.f;
  if (a.bias) b = a.bias_bf16 ? float(static_cast<const c10::BFloat16*>(a.bias)[j]) : static_cast<const float*>(a.bias)[j];
  const float v = sum * scale + b;
  if (a.y_bf16)
    static_cast<c10::BFloat16*>(a.y)[r * a.n + j] = c10::BFloat16(v);
  else
    static_cast<float*>(a.y)[r * a.n + j] = v;
}

// Group scale `i` of the [n, k / group] scales as fp32 (fp16 widens exactly). The vector loops'
// F16C form: every CPU with AVX2 has F16C.
inline float group_scale_plain(const Args& a, int64_t i) {
  return a.scale_f16 ? float(c10::Half(a.scale_f16[i], c10::Half::from_bits())) : a.scale[i];
}
__attribute__((target("f16c"), always_inline)) inline float group_scale(const Args& a, int64_t i) {
  return a.scale_f16 ? _cvtsh_ss(a.scale_f16[i]) : a.scale[i];
}

// Row r's input i as fp32 (bf16 rows widen exactly)
inline float x_at(const Args& a, int64_t r, int64_t i) {
  return a.xb ? float(a.xb[r * a.k + i]) : a.x[r * a.k + i];
}

inline void block_scalar(const Args& a, int64_t j0, int64_t j1) {
  const int64_t group = a.group ? a.group : a.k, groups = a.k / group;
  for (int64_t r = 0; r < a.rows; ++r) {
    for (int64_t j = j0; j < j1; ++j) {
      float sum = 0.f;
      const int8_t* wr = a.w + j * a.k;
      for (int64_t g = 0; g < groups; ++g) {
        float part = 0.f;
        for (int64_t i = g * group; i < (g + 1) * group; ++i) part += x_at(a, r, i) * float(wr[i]);
        sum += a.group ? part * group_scale_plain(a, j * groups + g) : part;
      }
      finish(a, r, j, sum, a.group ? 1.f : a.scale[j]);
    }
  }
}

// How far ahead the weight is prefetched, in blocks of kBlock channels, and into which cache.
// Measured on an AMD EPYC Zen 5 (2 threads, Gemma-3-270M's 262k x 640 LM head from DRAM, into L1):
// none 14 GB/s, 2 blocks 36-39, 3-4 blocks 48-50 with two accumulator sets; a plain read of the
// same bytes 50 GB/s. On an AMD EPYC Zen 4 4 blocks into L1 streamed 15-17 GB/s (the L1's few
// outstanding misses per core bound it); 8 blocks into L2 (`_MM_HINT_T2`) 21-24 GB/s, one bf16 row
// 9.9-11.1 -> 6.8-7.9 ms on the head in alternating processes (docs/PERFORMANCE.md, section 5b).
constexpr int kPrefetchBlocks = 8;
constexpr auto kPrefetchHint = _MM_HINT_T2;

// The weight rows of the kBlock channels kPrefetchBlocks blocks past `wr`, from column i: a cache line each
__attribute__((always_inline)) inline void prefetch_ahead(const Args& a, const int8_t* wr, int64_t i) {
  _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b)
    _mm_prefetch(reinterpret_cast<const char*>(wr + (kPrefetchBlocks * kBlock + b) * a.k + i), kPrefetchHint);
}

// The rows of a block: kTileRows at a time through one widened weight block (the first tile reads
// the weight from memory and prefetches ahead; the next find it in L1), a last odd row alone. Each
// row's sums run in the same order whatever the rows beside it, so a row's result does not depend
// on its batch (tests/kernels/test_native.py).
#define IQ_EACH_TILE(TILE, ...)                                                      \
  for (int64_t r = 0; r < a.rows; r += kTileRows)                                    \
    if (r + kTileRows <= a.rows) TILE<kTileRows>(a, __VA_ARGS__, r);                 \
    else TILE<1>(a, __VA_ARGS__, r)

// The bf16 pair loops' rows: four at a time, a last two and a last one alone (one `vdpbf16ps`
// does 32 products, so a widened run pays off over more rows: docs/PERFORMANCE.md, section 5b)
#define IQ_EACH_TILE4(TILE, ...)                                                     \
  do {                                                                               \
    int64_t r = 0;                                                                   \
    for (; r + 4 <= a.rows; r += 4) TILE<4>(a, __VA_ARGS__, r);                      \
    if (r + 2 <= a.rows) TILE<2>(a, __VA_ARGS__, r), r += 2;                         \
    if (r < a.rows) TILE<1>(a, __VA_ARGS__, r);                                      \
  } while (0)

// One 16-column step of kBlock channels for R rows into accumulator sets `acc` (masked: the last
// K % 16 columns): each weight vector widened once, multiplied into every row's sum.
template <bool Masked, int R>
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) inline void step_avx512(
    const Args& a, const float* x, const int8_t* wr, int64_t i, __mmask16 mask, __m512 (&acc)[R][kBlock]) {
  __m512 xv[R];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) xv[r] = Masked ? _mm512_maskz_loadu_ps(mask, x + r * a.k + i) : _mm512_loadu_ps(x + r * a.k + i);
  _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
    const int8_t* p = wr + b * a.k + i;
    const __m128i bytes = Masked ? _mm_maskz_loadu_epi8(mask, p) : _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes));
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r][b] = _mm512_fmadd_ps(wv, xv[r], acc[r][b]);
  }
}

// kBlock channels j.. for rows r0..r0 + R, 32 columns a step into two accumulator sets (one chain
// of dependent multiply-adds per channel stalled on its latency: 36 GB/s with one set, 48-50 with
// two); then one 16-column step and a masked one for the last K % 16 columns.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void tile_avx512(const Args& a, int64_t j, int64_t r0) {
  const int64_t k = a.k, pairs = k / 32 * 32, full = k / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << (k - full)) - 1u);
  const int8_t* wr = a.w + j * k;
  const float* x = a.x + r0 * k;
  __m512 acc[R][kBlock], acc2[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = acc2[r][b] = _mm512_setzero_ps();
  for (int64_t i = 0; i < pairs; i += 32) {
    if (r0 == 0 && (i & 63) == 0) prefetch_ahead(a, wr, i);  // a cache line per channel: DRAM streams stay busy
    step_avx512<false, R>(a, x, wr, i, 0, acc);
    step_avx512<false, R>(a, x, wr, i + 16, 0, acc2);
  }
  if (pairs < full) step_avx512<false, R>(a, x, wr, pairs, 0, acc);
  if (full < k) step_avx512<true, R>(a, x, wr, full, tail, acc2);
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b)
      finish(a, r0 + r, j + b, _mm512_reduce_add_ps(_mm512_add_ps(acc[r][b], acc2[r][b])), a.scale[j + b]);
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void block_avx512(const Args& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) IQ_EACH_TILE(tile_avx512, j);
  block_scalar(a, j, j1);
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 8 weights of channel row `p` widened to fp32
__attribute__((target("avx2,fma"), always_inline)) inline __m256 widen8(const int8_t* p) {
  int64_t eight;
  std::memcpy(&eight, p, 8);
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_cvtsi64_si128(eight)));
}

template <int R>
__attribute__((target("avx2,fma"))) inline void tile_avx2(const Args& a, int64_t j, int64_t r0) {
  const int64_t k = a.k, full = k / 8 * 8;
  const int8_t* wr = a.w + j * k;
  const float* x = a.x + r0 * k;
  __m256 acc[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = _mm256_setzero_ps();
  for (int64_t i = 0; i < full; i += 8) {
    __m256 xv[R];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * k + i);
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const __m256 wv = widen8(wr + b * k + i);
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(wv, xv[r], acc[r][b]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      float sum = hsum256(acc[r][b]);
      for (int64_t i = full; i < k; ++i) sum += x[r * k + i] * float(wr[b * k + i]);
      finish(a, r0 + r, j + b, sum, a.scale[j + b]);
    }
}

__attribute__((target("avx2,fma"))) inline void block_avx2(const Args& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) IQ_EACH_TILE(tile_avx2, j);
  block_scalar(a, j, j1);
}

// The group scales' memory and element size, whichever dtype holds them
inline int64_t scale_bytes(const Args& a) { return a.scale_f16 ? 2 : 4; }
inline const char* scale_data(const Args& a) {
  return a.scale_f16 ? reinterpret_cast<const char*>(a.scale_f16) : reinterpret_cast<const char*>(a.scale);
}

// The group scales of the block kPrefetchBlocks blocks past channel j: a stream beside the weight's
inline void prefetch_scales(const Args& a, int64_t j) {
  const int64_t groups = a.k / a.group, bytes = kBlock * groups * scale_bytes(a);
  const char* ahead = scale_data(a) + std::min(j + kPrefetchBlocks * kBlock, a.n - 1) * groups * scale_bytes(a);
  for (int64_t at = 0; at < bytes; at += 64) _mm_prefetch(ahead + at, _MM_HINT_T0);
}

// Group scales (a.group > 0, a multiple of 32): per group the partial sum times the group's scale
// into the channel's sum, even and odd groups in two chains.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void tile_avx512_grouped(const Args& a, int64_t j, int64_t r0) {
  const int64_t k = a.k, group = a.group, groups = k / group;
  const int8_t* wr = a.w + j * k;
  const float* x = a.x + r0 * k;
  if (r0 == 0) prefetch_scales(a, j);
  __m512 sum[2][R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) sum[0][r][b] = sum[1][r][b] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512 part[R][kBlock];
    for (int64_t i = g * group; i < (g + 1) * group; i += 16) {
      if (r0 == 0 && (i & 63) == 0) prefetch_ahead(a, wr, i);
      __m512 xv[R];
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) xv[r] = _mm512_loadu_ps(x + r * k + i);
      _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
        const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + b * k + i))));
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) part[r][b] = i == g * group ? _mm512_mul_ps(wv, xv[r]) : _mm512_fmadd_ps(wv, xv[r], part[r][b]);
      }
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const __m512 s = _mm512_set1_ps(group_scale(a, (j + b) * groups + g));
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) sum[g & 1][r][b] = _mm512_fmadd_ps(part[r][b], s, sum[g & 1][r][b]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b)
      finish(a, r0 + r, j + b, _mm512_reduce_add_ps(_mm512_add_ps(sum[0][r][b], sum[1][r][b])), 1.f);
}

__attribute__((target("avx512f,avx512bw,avx512vl,f16c"))) inline void block_avx512_grouped(const Args& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) IQ_EACH_TILE(tile_avx512_grouped, j);
  block_scalar(a, j, j1);
}

template <int R>
__attribute__((target("avx2,fma,f16c"))) inline void tile_avx2_grouped(const Args& a, int64_t j, int64_t r0) {
  const int64_t k = a.k, group = a.group, groups = k / group;
  const int8_t* wr = a.w + j * k;
  const float* x = a.x + r0 * k;
  if (r0 == 0) prefetch_scales(a, j);
  __m256 sum[R][kBlock];
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) sum[r][b] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256 acc[R][kBlock];
    _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
      _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) acc[r][b] = _mm256_setzero_ps();
    for (int64_t i = g * group; i < (g + 1) * group; i += 8) {
      if (r0 == 0 && (i & 63) == 0) prefetch_ahead(a, wr, i);
      __m256 xv[R];
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * k + i);
      _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
        const __m256 wv = widen8(wr + b * k + i);
        _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) acc[r][b] = _mm256_fmadd_ps(wv, xv[r], acc[r][b]);
      }
    }
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const __m256 s = _mm256_set1_ps(group_scale(a, (j + b) * groups + g));
      _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r) sum[r][b] = _mm256_fmadd_ps(acc[r][b], s, sum[r][b]);
    }
  }
  _Pragma("GCC unroll 8") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) finish(a, r0 + r, j + b, hsum256(sum[r][b]), 1.f);
}

__attribute__((target("avx2,fma,f16c"))) inline void block_avx2_grouped(const Args& a, int64_t j0, int64_t j1) {
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) IQ_EACH_TILE(tile_avx2_grouped, j);
  block_scalar(a, j, j1);
}

// bf16 rows with group scales on a CPU with AVX512-BF16: each run of 32 weights widened once to
// bf16 (exact: every int8 is a bf16) and multiplied with each row's bf16 pairs by `vdpbf16ps`
// (products exact, pair sums in fp32), the run's dot times its group's scale into the channel's
// sum. Why: from two rows the fp32 loop above is bound by arithmetic (one multiply-add per 16
// weight x row products, the weight widened again for every tile of two rows); here one
// instruction does 32 and four rows share each widened run (AMD EPYC Zen 4, 2 threads, fp16 scales
// in groups of 32, this loop's time / the fp32 loop's, interleaved: 262k x 640 LM head 0.97-1.01
// at 1-2 rows, 0.63 / 0.68 / 0.71 at 4 / 8 / 16; 2048 x 640 and 640 x 2048, in cache, 0.83-0.88 at
// one row, 0.69-0.73 from 2; tiles of two rows only: 0.81-0.89 from 4). The weight's values are not rounded
// (q exact, the scale applied in fp32), as in the fp32 loop; sums run in another order (pairs),
// the same for every row whatever its tile, so a row's result still does not depend on its batch.
constexpr int kMaxGroups = 1024;  // group scales of a block staged on the stack: K up to 32768 in groups of 32
#define IQ_GEMV_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))

// One group's runs of kBlock channels for R rows into `acc`: per run of 32 columns, each channel's
// weights widened once to bf16, each row's pair products summed (`vdpbf16ps`), times the group's scale.
template <int R>
IQ_GEMV_BF16 __attribute__((always_inline)) inline void group_bf16(const Args& a, const int8_t* wr, const c10::BFloat16* x,
                                                                   const float* sc, int64_t g, bool lead,
                                                                   __m512 (&acc)[R][kBlock]) {
  const int64_t k = a.k, groups = k / a.group;
  __m512 s[kBlock];
  _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) s[b] = _mm512_set1_ps(sc[b * groups + g]);
  for (int64_t i = g * a.group; i < (g + 1) * a.group; i += 32) {
    if (lead && (i & 63) == 0) prefetch_ahead(a, wr, i);
    __m512bh xv[R];
    _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r) xv[r] = (__m512bh)_mm512_loadu_si512(x + r * k + i);
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) {
      const int8_t* p = wr + b * k + i;
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16))));
      const __m512bh wv = _mm512_cvtne2ps_pbh(hi, lo);  // lanes 0-15 the first 16 columns, as x's
      _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
        acc[r][b] = _mm512_fmadd_ps(_mm512_dpbf16_ps(_mm512_setzero_ps(), xv[r], wv), s[b], acc[r][b]);
    }
  }
}

// kBlock channels j.. for rows r0..r0 + R: even and odd groups into two accumulator sets (one
// chain per channel stalled on its latency at one row, as in the fp32 loop)
template <int R>
IQ_GEMV_BF16 inline void tile_bf16_grouped(const Args& a, int64_t j, const float* sc, int64_t r0) {
  const int64_t groups = a.k / a.group;
  const int8_t* wr = a.w + j * a.k;
  const c10::BFloat16* x = a.xb + r0 * a.k;
  __m512 even[R][kBlock], odd[R][kBlock];
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b) even[r][b] = odd[r][b] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    group_bf16<R>(a, wr, x, sc, g, r0 == 0, even);
    group_bf16<R>(a, wr, x, sc, g + 1, r0 == 0, odd);
  }
  if (g < groups) group_bf16<R>(a, wr, x, sc, g, r0 == 0, even);
  _Pragma("GCC unroll 4") for (int r = 0; r < R; ++r)
    _Pragma("GCC unroll 4") for (int b = 0; b < kBlock; ++b)
      finish(a, r0 + r, j + b, _mm512_reduce_add_ps(_mm512_add_ps(even[r][b], odd[r][b])), 1.f);
}

// Rows four at a time through each widened run (a last two and a last one alone); the block's
// fp16 group scales widened to fp32 once for all its row tiles, 16 a step (fp32 ones read in place).
IQ_GEMV_BF16 inline void block_bf16_grouped(const Args& a, int64_t j0, int64_t j1) {
  const int64_t groups = a.k / a.group, staged = kBlock * groups;
  alignas(64) float widened[kBlock * kMaxGroups];
  int64_t j = j0;
  for (; j + kBlock <= j1; j += kBlock) {
    prefetch_scales(a, j);
    const float* sc = a.scale ? a.scale + j * groups : widened;
    if (!a.scale) {
      const uint16_t* h = a.scale_f16 + j * groups;
      int64_t i = 0;
      for (; i + 16 <= staged; i += 16)
        _mm512_store_ps(widened + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i))));
      for (; i < staged; ++i) widened[i] = _cvtsh_ss(h[i]);
    }
    IQ_EACH_TILE4(tile_bf16_grouped, j, sc);
  }
  block_scalar(a, j, j1);
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

// Whether bf16 rows with these groups take the bf16 loop as they are (`Args::xb`): AVX512-BF16 on
// a CPU whose AVX-512 `pick()` uses; else the caller widens them to fp32 for the loops above.
inline bool takes_bf16_rows(int64_t k, int64_t group) {
  static const bool bf16 = pick() == block_avx512 && __builtin_cpu_supports("avx512bf16");
  return bf16 && group > 0 && k / group <= kMaxGroups;
}

// The group-scale loop of the same width as `pick()`'s
inline Block grouped(Block b) {
  return b == block_avx512 ? block_avx512_grouped : b == block_avx2 ? block_avx2_grouped : block_scalar;
}

// 16 fp32 values stored as fp32 (bf16 null) or rounded to bf16 (to nearest even, as c10::BFloat16
// rounds finite values)
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void store16(__m512 v, float* f32, c10::BFloat16* bf16) {
  if (!bf16) {
    _mm512_storeu_ps(f32, v);
    return;
  }
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd), 16);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(bf16), _mm512_cvtepi32_epi16(rounded));
}

// One [k] row of int8 weights times its group scales (groups of `group`, a multiple of 32) as fp32
// products, written as fp32 or rounded once to bf16: what the eager model's dequantize and autocast give.
inline void dequantize_row_plain(const int8_t* wr, const float* sc, int64_t k, int64_t group, float* f32,
                                 c10::BFloat16* bf16) {
  for (int64_t i = 0; i < k; ++i) {
    const float v = float(wr[i]) * sc[i / group];
    if (bf16) bf16[i] = c10::BFloat16(v); else f32[i] = v;
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void dequantize_row_avx512(
    const int8_t* wr, const float* sc, int64_t k, int64_t group, float* f32, c10::BFloat16* bf16) {
  for (int64_t i = 0; i < k; i += 16) {
    const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(wr + i))));
    store16(_mm512_mul_ps(v, _mm512_set1_ps(sc[i / group])), f32 ? f32 + i : nullptr, bf16 ? bf16 + i : nullptr);
  }
}

// The int8 [n, k] weight with scales [n, k / group] as floats [n, k] (fp32, or bf16: out_bf16),
// for a prompt's rows to multiply with the float GEMM. Threads split N.
inline void dequantize(const int8_t* w, const float* scale, int64_t n, int64_t k, int64_t group, void* out,
                       bool out_bf16) {
  static const bool avx512 = pick() == block_avx512;
  at::parallel_for(0, n, 16, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      float* f32 = out_bf16 ? nullptr : static_cast<float*>(out) + j * k;
      c10::BFloat16* bf16 = out_bf16 ? static_cast<c10::BFloat16*>(out) + j * k : nullptr;
      (avx512 ? dequantize_row_avx512 : dequantize_row_plain)(w + j * k, scale + j * (k / group), k, group, f32, bf16);
    }
  });
}

// The weight's memory in 2 MB pages, asked before the first GEMV reads it (once per weight: the
// caller remembers which it asked, by storage, `advise_huge_pages_once` in onednn_direct.cpp).
// A decode step streams every weight byte from DRAM; with 4 KB pages the reads of
// the 168 MB LM head cross a page (and a TLB miss) every 4 KB: 46-54 GB/s on an AMD EPYC Zen 5,
// 57-60 GB/s from 2 MB pages (docs/PERFORMANCE.md, section 5b). The tensor stays where it is:
// MADV_HUGEPAGE marks the range, MADV_COLLAPSE (Linux 6.1+) moves its whole 2 MB blocks into huge
// pages now, content unchanged. Either may fail (older kernel, transparent huge pages off): then
// nothing changes but the speed.
inline void advise_huge_pages(const void* data, int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  constexpr int kCollapse = 25;  // MADV_COLLAPSE, not in every libc's headers
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + uintptr_t(bytes)) & ~(kHuge - 1);
  if (end <= begin) return;
  void* at = reinterpret_cast<void*>(begin);
  if (madvise(at, end - begin, MADV_HUGEPAGE) == 0) madvise(at, end - begin, kCollapse);
}

// y = x w^T * scale (+ bias) for every row and output channel, threads splitting N.
inline void run(const Args& a) {
  static const Block per_channel = pick(), per_group = grouped(per_channel);
  const Block block = a.xb ? block_bf16_grouped : a.group ? per_group : per_channel;
  const int64_t blocks = (a.n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 64, [&](int64_t b0, int64_t b1) { block(a, b0 * kBlock, std::min(b1 * kBlock, a.n)); });
}

}  // namespace woq_gemv
