// bf16 attention in one pass per (batch, head): softmax(q k^T * scale + mask) v, with q, k, v
// bf16 [B, H, S, D] (any strides, the last dim's 1) and the output bf16 [B, Sq, H, Dv] memory.
//
// Why: the oneDNN route of `iq_onednn::attention` (onednn_direct.cpp) runs three primitives over
// the whole batch, the f32 scores (6 MB at BERT-base bs8) going out to L3 and back for the softmax
// and again as bf16 for the second matmul. Here one (batch, head) is done at a time inside L1/L2:
// K and V are packed once into the pair layout of AVX512-BF16's dot product (`vdpbf16ps`: two
// bf16 products added into an fp32 lane), then eight query rows at a time get their scores, the
// exps and the context while they sit in registers and L1 (docs/ARCHITECTURE.md, section 8, with
// the measurements: level with the primitives unmasked, faster with a mask and inside BERT bs1).
//
// Numbers: products of bf16 summed in fp32 (as oneDNN's bf16 matmul), in another order; exp by
// a degree-5 polynomial after range reduction (within 3e-6 of e^x, relative); exp(s - max) rounded to
// bf16 before the second product and the context divided by the fp32 sum at the end (flash
// attention's order), so the output is attention within bf16 rounding, as the oneDNN route's
// (tests/kernels/test_native.py).
//
// Used where the CPU has AVX512-BF16 but no AMX (there oneDNN's AMX matmuls run; not measured
// against this) and torch's CPU capability is AVX-512; else, or for shapes it does not take
// (no keys, a mask strided along the keys), the oneDNN route. Fewer than 32 query rows (a decode
// step) take `few_rows`, which reads K and V in place instead of packing them.

#pragma once

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace attention_bf16 {

struct Args {
  const uint16_t *q, *k, *v;  // bf16 bits
  int64_t B, H, Sq, Sk, D, Dv;
  int64_t qs[3], ks[3], vs[3];  // element strides of dims b, h, s (the last dim is dense)
  const void* mask = nullptr;   // f32 or bf16 (mask_bf16), or nullptr
  bool mask_bf16 = false;
  int64_t ms[4] = {0, 0, 0, 0};  // mask element strides, 0 along a broadcast dim; ms[3] is 0 or 1
  float scale;
  uint16_t* out;  // [B, Sq, H, Dv], contiguous
};

// Whether this process can run the kernel (the CPU, and torch's capability, which
// ATEN_CPU_CAPABILITY caps), and whether it does by default (not where AMX is: oneDNN's is faster).
inline bool cpu_can_run() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return at::get_cpu_capability() == "AVX512" && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

inline bool cpu_supported() { return cpu_can_run() && !__builtin_cpu_supports("amx-bf16"); }

// From this many query rows K and V are packed once per head (`one_head`); fewer rows (a decode
// step: one token's query heads as rows of their KV head) read K and V where they lie
// (`few_rows`): packing cost a decode step's one row more than the primitives (Gemma-3-270M decode
// 8.1 -> 8.7-9.2 ms a token). Any D (an odd one's last pair padded with a zero) and Dv (the last
// 16-lane block masked).
constexpr int64_t kMinQueries = 32;
inline bool shape_supported(int64_t Sq, int64_t Sk, int64_t D, int64_t Dv) {
  return Sq > 0 && Sk > 0 && D > 0 && Dv > 0;
}

#define IQ_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// e^x for x <= 0 (scores minus their row max): x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor
// polynomial of degree 5 (error ~3e-6 relative: the exps are rounded to bf16, whose half step is
// 2e-3), times 2^n by `vscalefps` (x is clamped to -87, where e^x is about FLT_MIN: smaller exps
// of a row with a max of 0 are below what a bf16 probability can hold next to 1 anyway). Degree 7
// and 2^n built in the exponent bits took 30 % longer on an AMD Zen 4, whose 512-bit float
// operations take both halves of the vector unit (softmax was a seventh of the kernel there).
IQ_AVX512_BF16 inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.f));  // also takes -inf (a masked score) to 0 below
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.f / 120);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

IQ_AVX512_BF16 inline __m512 dot(__m512 acc, __m512i a, __m512i b) {
  return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b);
}

inline uint32_t pair(const uint16_t* p) {  // two adjacent bf16, any 2-byte alignment
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// the p-th pair of a row of n bf16; past the end (odd n) a zero
inline uint32_t pair_of(const uint16_t* row, int64_t p, int64_t n) {
  return 2 * p + 1 < n ? pair(row + 2 * p) : uint32_t(row[2 * p]);
}

inline float widen(uint16_t bf16) {  // a bf16 as the float it is
  const uint32_t bits = uint32_t(bf16) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __mmask16 lanes(int64_t left) {  // the first min(left, 16) lanes; none for left <= 0
  return left >= 16 ? __mmask16(0xFFFF) : left <= 0 ? __mmask16(0) : __mmask16((1u << left) - 1);
}

constexpr int kRows = 8;  // query rows per block: 16 accumulators in the score and context loops

// Per-thread scratch: K and V in pair layout, a block's scores, exps, row maxima and 1 / sums.
struct Scratch {
  int64_t skp = 0;                 // Sk rounded up to 32 (two 16-lane key blocks)
  int64_t dvp = 0;                 // Dv rounded up to 16 (vp's row length)
  std::vector<uint32_t> kp, vp;    // kp[p][j] = k[j][2p..2p+1]; vp[jp][d] = (v[2jp][d], v[2jp+1][d])
  std::vector<float> s;            // [kRows][skp]
  std::vector<uint16_t> e;         // [kRows][skp] bf16 exp(s - max), zeros after Sk
  std::vector<uint32_t> qp;        // [D / 2][rows] the block's query rows as pairs
  float max[kRows], inv[kRows];
  Scratch(const Args& a, bool packed)
      : skp((a.Sk + 31) / 32 * 32), dvp((a.Dv + 15) / 16 * 16), kp(packed ? (a.D + 1) / 2 * skp : 0),
        vp(packed ? skp / 2 * dvp : 0), s(kRows * skp), e(kRows * skp), qp(packed ? (a.D + 1) / 2 * kRows : 0) {}
};

// V's keys 2jp and 2jp + 1 at channels [d, d + 16) side by side as `vdpbf16ps` pairs, read from
// V's rows where they lie (zeros past Sk and Dv)
struct VRowPairs {
  const Args& a;
  const uint16_t* v;
  IQ_AVX512_BF16 __m512i operator()(int64_t jp, int64_t d) const {
    const __mmask16 in = lanes(a.Dv - d);
    const uint16_t* row = v + 2 * jp * a.vs[2] + d;
    const __m256i lo = 2 * jp < a.Sk ? _mm256_maskz_loadu_epi16(in, row) : _mm256_setzero_si256();
    const __m256i hi = 2 * jp + 1 < a.Sk ? _mm256_maskz_loadu_epi16(in, row + a.vs[2]) : _mm256_setzero_si256();
    return _mm512_or_si512(_mm512_cvtepu16_epi32(lo), _mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
  }
};

// the same pairs from `pack`'s copy
struct PackedVPairs {
  const Scratch& t;
  IQ_AVX512_BF16 __m512i operator()(int64_t jp, int64_t d) const {
    return _mm512_loadu_si512(t.vp.data() + jp * t.dvp + d);
  }
};

IQ_AVX512_BF16 inline void pack(const Args& a, Scratch& t, const uint16_t* k, const uint16_t* v) {
  const int64_t half = (a.D + 1) / 2, skp = t.skp;
  for (int64_t j = 0; j < a.Sk; ++j) {
    const uint16_t* row = k + j * a.ks[2];
    for (int64_t p = 0; p < a.D / 2; ++p) t.kp[p * skp + j] = pair(row + 2 * p);
    if (a.D % 2) t.kp[(half - 1) * skp + j] = pair_of(row, half - 1, a.D);
  }
  for (int64_t p = 0; p < half; ++p) std::fill(t.kp.begin() + p * skp + a.Sk, t.kp.begin() + (p + 1) * skp, 0u);
  const VRowPairs v_pairs{a, v};
  for (int64_t jp = 0; jp < skp / 2; ++jp)
    for (int64_t d = 0; d < t.dvp; d += 16) _mm512_storeu_si512(t.vp.data() + jp * t.dvp + d, v_pairs(jp, d));
}

// the mask's 16 values at keys [j, j + 16) of the row starting at element `at` (one value
// broadcast where the mask is constant along the keys)
IQ_AVX512_BF16 inline __m512 mask_at(const Args& a, int64_t at, int64_t j) {
  if (a.ms[3] == 0)
    return _mm512_set1_ps(a.mask_bf16 ? widen(static_cast<const uint16_t*>(a.mask)[at])
                                      : static_cast<const float*>(a.mask)[at]);
  if (a.mask_bf16) {
    const __m256i raw = _mm256_maskz_loadu_epi16(lanes(a.Sk - j), static_cast<const uint16_t*>(a.mask) + at + j);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  }
  return _mm512_maskz_loadu_ps(lanes(a.Sk - j), static_cast<const float*>(a.mask) + at + j);
}

// scores (scaled, masked) of R query rows from i into t.s, and each row's maximum into t.max
template <int R>
IQ_AVX512_BF16 inline void scores(const Args& a, Scratch& t, const uint16_t* q, int64_t b, int64_t h, int64_t i) {
  const int64_t half = (a.D + 1) / 2, skp = t.skp, Sk = a.Sk;
  // the block's query rows as pairs, p-major ([p][r]): the inner loop's broadcasts read one
  // pointer at fixed offsets (with eight row pointers the compiler ran out of registers)
  uint32_t* qp = t.qp.data();
  for (int r = 0; r < R; ++r) {
    const uint16_t* row = q + (i + r) * a.qs[2];
    for (int64_t p = 0; p < a.D / 2; ++p) qp[p * R + r] = pair(row + 2 * p);
    if (a.D % 2) qp[(half - 1) * R + r] = pair_of(row, half - 1, a.D);
  }
  // a padding mask ([B, 1, 1, Sk]) is one row for all query rows: read once per 16 keys, not per
  // row (read per row it took a quarter of the scores' time on an AMD Zen 5). Read here, as the
  // scale, into locals: the score stores are floats, which the compiler must assume can overwrite
  // `a.scale` and so reloaded it after each.
  const bool masked = a.mask != nullptr, shared_mask = a.ms[2] == 0;
  const int64_t mask_row = b * a.ms[0] + h * a.ms[1] + i * a.ms[2], mask_step = a.ms[2];
  const __m512 scale = _mm512_set1_ps(a.scale);
  float* s = t.s.data();
  // running maxima in registers: with the 16 accumulators, the two K blocks and a broadcast 27
  // of AVX-512's 32 (kept in memory, the scores took 15 % longer on an AMD Zen 4)
  __m512 mx[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) mx[r] = _mm512_set1_ps(-INFINITY);
  for (int64_t kb = 0; kb < skp; kb += 32) {
    __m512 acc[R][2];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t* kcol = t.kp.data() + kb;
    for (int64_t p = 0; p < half; ++p) {
      const __m512i k0 = _mm512_loadu_si512(kcol + p * skp), k1 = _mm512_loadu_si512(kcol + p * skp + 16);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512i qb = _mm512_set1_epi32(int(qp[p * R + r]));
        acc[r][0] = dot(acc[r][0], qb, k0);
        acc[r][1] = dot(acc[r][1], qb, k1);
      }
    }
#pragma GCC unroll 16
    for (int c = 0; c < 2; ++c) {
      const int64_t j = kb + 16 * c;
      if (j >= Sk) {  // padding keys: their scores are never read (the exps there are zeroed)
        continue;
      }
      const __m512 shared = masked && shared_mask ? mask_at(a, mask_row, j) : _mm512_setzero_ps();
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        __m512 v = _mm512_mul_ps(acc[r][c], scale);
        if (masked) v = _mm512_add_ps(v, shared_mask ? shared : mask_at(a, mask_row + r * mask_step, j));
        mx[r] = _mm512_mask_max_ps(mx[r], lanes(Sk - j), mx[r], v);
        _mm512_storeu_ps(s + r * skp + j, v);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) t.max[r] = _mm512_reduce_max_ps(mx[r]);
}

// exp(s - max) of R rows, rounded to bf16 into t.e (zeros after Sk), and 1 / their sum (of the
// unrounded exps) into t.inv: the rows side by side, so their sums' latency overlaps
template <int R>
IQ_AVX512_BF16 inline void softmax(const Args& a, Scratch& t) {
  const int64_t skp = t.skp;
  __m512 m[R], sum[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) m[r] = _mm512_set1_ps(t.max[r]), sum[r] = _mm512_setzero_ps();
  for (int64_t j = 0; j < skp; j += 16) {
    const __mmask16 in = lanes(a.Sk - j);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 e = _mm512_maskz_mov_ps(in, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(t.s.data() + r * skp + j), m[r])));
      sum[r] = _mm512_add_ps(sum[r], e);
      _mm256_storeu_si256((__m256i*)(t.e.data() + r * skp + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)  // a row the mask takes whole (-inf everywhere) attends to nothing: 0, as torch's
    t.inv[r] = t.max[r] == -INFINITY ? 0.f : 1.f / _mm512_reduce_add_ps(sum[r]);
}

// out rows i..i+R, channels [d0, d1) = (exps x V) / sum, NB blocks of 16 channels at a time, over
// the first `pairs` key pairs that `v_pairs` gives
template <int R, int NB, typename VPairs>
IQ_AVX512_BF16 inline void context(const Args& a, const Scratch& t, const VPairs& v_pairs, int64_t pairs, uint16_t* out,
                                   int64_t i, int64_t d0, int64_t d1) {
  const int64_t row_stride = a.H * a.Dv;
  for (int64_t d = d0; d + 16 * NB <= d1; d += 16 * NB) {
    __m512 acc[R][NB];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int c = 0; c < NB; ++c) acc[r][c] = _mm512_setzero_ps();
    for (int64_t jp = 0; jp < pairs; ++jp) {
      __m512i vv[NB];
#pragma GCC unroll 16
      for (int c = 0; c < NB; ++c) vv[c] = v_pairs(jp, d + 16 * c);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const __m512i pb = _mm512_set1_epi32(int(pair(t.e.data() + r * t.skp + 2 * jp)));
#pragma GCC unroll 16
        for (int c = 0; c < NB; ++c) acc[r][c] = dot(acc[r][c], pb, vv[c]);
      }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 inv = _mm512_set1_ps(t.inv[r]);
#pragma GCC unroll 16
      for (int c = 0; c < NB; ++c)
        _mm256_mask_storeu_epi16(out + (i + r) * row_stride + d + 16 * c, lanes(a.Dv - d - 16 * c),
                                 (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(acc[r][c], inv)));
    }
  }
}

template <int R>
IQ_AVX512_BF16 inline void rows(const Args& a, Scratch& t, const uint16_t* q, uint16_t* out, int64_t b, int64_t h,
                                int64_t i) {
  scores<R>(a, t, q, b, h, i);
  softmax<R>(a, t);
  const int64_t wide = t.dvp / 32 * 32;
  const PackedVPairs v_pairs{t};
  context<R, 2>(a, t, v_pairs, t.skp / 2, out, i, 0, wide);
  context<R, 1>(a, t, v_pairs, t.skp / 2, out, i, wide, t.dvp);
}

// query rows [i0, i1) of one (batch, head)
IQ_AVX512_BF16 inline void one_head(const Args& a, Scratch& t, int64_t b, int64_t h, int64_t i0, int64_t i1) {
  const uint16_t* q = a.q + b * a.qs[0] + h * a.qs[1];
  pack(a, t, a.k + b * a.ks[0] + h * a.ks[1], a.v + b * a.vs[0] + h * a.vs[1]);
  uint16_t* out = a.out + (b * a.Sq * a.H + h) * a.Dv;
  int64_t i = i0;
  for (; i + kRows <= i1; i += kRows) rows<kRows>(a, t, q, out, b, h, i);
  for (; i + 4 <= i1; i += 4) rows<4>(a, t, q, out, b, h, i);
  for (; i < i1; ++i) rows<1>(a, t, q, out, b, h, i);
}

// ---- few query rows: K and V read in place -------------------------------------------------

// A decode step finds its layer's K and V in memory, not in cache: the weights streamed since the
// last step evicted them. Reading the keys' rows one after another without prefetching, the op
// took 81 us a call inside Gemma-3-270M's decode step against 15 us timed alone (AMD Zen 5, torch
// profiler). So the scores loop prefetches the key row kPrefetchKeys ahead into L1 and the value
// row of the key it is on into L2, where the context loop finds it: 29 us a call in the step.
constexpr int64_t kPrefetchKeys = 16;

__attribute__((always_inline)) inline void prefetch_row(const uint16_t* row, int64_t n, int hint) {
  for (int64_t c = 0; c < n; c += 32) {  // one cache line: 32 bf16
    if (hint == _MM_HINT_T0) _mm_prefetch(reinterpret_cast<const char*>(row + c), _MM_HINT_T0);
    else _mm_prefetch(reinterpret_cast<const char*>(row + c), _MM_HINT_T1);
  }
}

// scores of R query rows against every key, each a dot product of two bf16 rows in `vdpbf16ps`
// (32 elements a step, the tail loaded masked: zeros add nothing), summed across its 16 lanes;
// scaled and masked into t.s, the rows' maxima into t.max
template <int R>
IQ_AVX512_BF16 inline void direct_scores(const Args& a, Scratch& t, const uint16_t* q, const uint16_t* k,
                                         const uint16_t* v, int64_t b, int64_t h, int64_t i) {
  float mx[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) mx[r] = -INFINITY;
  for (int64_t j = 0; j < a.Sk; ++j) {
    const uint16_t* kr = k + j * a.ks[2];
    prefetch_row(k + (j + kPrefetchKeys) * a.ks[2], j + kPrefetchKeys < a.Sk ? a.D : 0, _MM_HINT_T0);
    prefetch_row(v + j * a.vs[2], a.Dv, _MM_HINT_T1);  // for the context loop, which reads V next
    __m512 acc[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < a.D; c += 32) {
      const __mmask32 in = a.D - c >= 32 ? __mmask32(0xFFFFFFFFu) : __mmask32((1u << (a.D - c)) - 1);
      const __m512i kc = _mm512_maskz_loadu_epi16(in, kr + c);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) acc[r] = dot(acc[r], _mm512_maskz_loadu_epi16(in, q + (i + r) * a.qs[2] + c), kc);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      float s = _mm512_reduce_add_ps(acc[r]) * a.scale;
      if (a.mask) {
        const int64_t at = b * a.ms[0] + h * a.ms[1] + (i + r) * a.ms[2] + j * a.ms[3];
        s += a.mask_bf16 ? widen(static_cast<const uint16_t*>(a.mask)[at]) : static_cast<const float*>(a.mask)[at];
      }
      t.s[r * t.skp + j] = s;
      mx[r] = std::max(mx[r], s);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    std::fill(t.s.begin() + r * t.skp + a.Sk, t.s.begin() + (r + 1) * t.skp, -INFINITY);
    t.max[r] = mx[r];
  }
}

template <int R>
IQ_AVX512_BF16 inline void direct_rows(const Args& a, Scratch& t, const uint16_t* q, const uint16_t* k,
                                       const uint16_t* v, uint16_t* out, int64_t b, int64_t h, int64_t i) {
  direct_scores<R>(a, t, q, k, v, b, h, i);
  softmax<R>(a, t);
  constexpr int NB = R <= 4 ? 4 : 2;  // R x NB accumulators: 16 of AVX-512's 32 registers
  const int64_t wide = t.dvp / (16 * NB) * (16 * NB), pairs = (a.Sk + 1) / 2;
  const VRowPairs v_pairs{a, v};  // V read in place, two keys' rows put side by side
  context<R, NB>(a, t, v_pairs, pairs, out, i, 0, wide);
  context<R, 1>(a, t, v_pairs, pairs, out, i, wide, t.dvp);
}

// all query rows (fewer than kMinQueries) of one (batch, head)
IQ_AVX512_BF16 inline void few_rows(const Args& a, Scratch& t, int64_t b, int64_t h) {
  const uint16_t* q = a.q + b * a.qs[0] + h * a.qs[1];
  const uint16_t *k = a.k + b * a.ks[0] + h * a.ks[1], *v = a.v + b * a.vs[0] + h * a.vs[1];
  uint16_t* out = a.out + (b * a.Sq * a.H + h) * a.Dv;
  int64_t i = 0;
  for (; i + kRows <= a.Sq; i += kRows) direct_rows<kRows>(a, t, q, k, v, out, b, h, i);
  for (; i + 4 <= a.Sq; i += 4) direct_rows<4>(a, t, q, k, v, out, b, h, i);
  for (; i + 2 <= a.Sq; i += 2) direct_rows<2>(a, t, q, k, v, out, b, h, i);
  for (; i < a.Sq; ++i) direct_rows<1>(a, t, q, k, v, out, b, h, i);
}

// Threads take (batch, head) pairs; with fewer pairs than two per thread each head's rows are
// split in parts too (each part packs its head's K and V again). Fewer than kMinQueries rows:
// one task per (batch, head), K and V unpacked.
inline void run(const Args& a) {
  const int64_t heads = a.B * a.H, blocks = (a.Sq + kRows - 1) / kRows;
  if (a.Sq < kMinQueries) {
    auto heads_of = [&](int64_t t0, int64_t t1) {
      Scratch t(a, false);
      for (int64_t bh = t0; bh < t1; ++bh) few_rows(a, t, bh / a.H, bh % a.H);
    };
    if (heads == 1) heads_of(0, 1);  // no parallel region to wake for one task
    else at::parallel_for(0, heads, 1, heads_of);
    return;
  }
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(blocks, (2 * at::get_num_threads() + heads - 1) / heads));
  const int64_t rows_per_part = (blocks + parts - 1) / parts * kRows;
  at::parallel_for(0, heads * parts, 1, [&](int64_t t0, int64_t t1) {
    Scratch t(a, true);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t bh = task / parts, i0 = task % parts * rows_per_part;
      if (i0 < a.Sq) one_head(a, t, bh / a.H, bh % a.H, i0, std::min(a.Sq, i0 + rows_per_part));
    }
  });
}

#undef IQ_AVX512_BF16

}  // namespace attention_bf16
