// Element types, float16 conversion and moment merging for the CPU GroupNorm kernels.
#ifndef GN_MXNET_CPU_COMMON_H_
#define GN_MXNET_CPU_COMMON_H_

#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>

// The kernels are compiled once per instruction set (setup.py); each build lives in its own
// namespace, gn::generic or gn::avx2, so their inline functions never mix at link time.
#ifndef GN_KERNEL_ISA
#define GN_KERNEL_ISA generic
#endif

namespace gn {
namespace GN_KERNEL_ISA {

// IEEE binary16 as stored by MXNet; arithmetic happens in float.
struct Half {
  uint16_t bits;
};

#if defined(__F16C__)
// The AVX2 build has F16C: one instruction each way, same rounding (nearest, ties to even).
inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
inline uint16_t float_to_half(float value) {
  return static_cast<uint16_t>(_cvtss_sh(value, _MM_FROUND_TO_NEAREST_INT));
}
#else
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  uint32_t bits;
  if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Round to nearest, ties to even; overflow gives infinity, NaN stays NaN.
inline uint16_t float_to_half(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {
    return sign | 0x7c00u | (magnitude > 0x7f800000u ? 0x200u : 0u);
  }
  if (magnitude >= 0x47800000u) return sign | 0x7c00u;  // >= 65536 is past the largest half
  if (magnitude < 0x38800000u) {                        // below 2^-14: subnormal half
    float abs_value;
    std::memcpy(&abs_value, &magnitude, sizeof(abs_value));
    return sign | static_cast<uint16_t>(std::nearbyint(abs_value * 16777216.0f));
  }
  uint32_t half = ((magnitude >> 23) - 112u) << 10 | ((magnitude & 0x7fffffu) >> 13);
  const uint32_t rest = magnitude & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // carry may reach inf: right
  return sign | static_cast<uint16_t>(half);
}
#endif  // __F16C__

template <typename T>
struct Element {
  using Acc = T;
  static inline T load(T v) { return v; }
  static inline T store(T v) { return v; }
};

template <>
struct Element<Half> {
  using Acc = float;
  static inline float load(Half v) { return half_to_float(v.bits); }
  static inline Half store(float v) { return Half{float_to_half(v)}; }
};

template <typename T>
using AccOf = typename Element<T>::Acc;

// Count, mean and sum of squared deviations of a set; merged with Chan et al.'s formula so
// no E[x^2] - E[x]^2 cancellation happens at any level.
struct Moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;

  inline void merge(double other_count, double other_mean, double other_m2) {
    if (other_count == 0.0) return;
    const double total = count + other_count;
    const double delta = other_mean - mean;
    mean += delta * (other_count / total);
    m2 += other_m2 + delta * delta * (count * other_count / total);
    count = total;
  }
};

// Independent accumulators per reduction: one vector accumulator would make every add wait
// for the previous one (latency-bound); this many keep the FMA/add pipes busy.
template <typename Acc>
constexpr int kLanes = 64 / static_cast<int>(sizeof(Acc)) * 2;

template <typename Acc, int L>
inline Acc sum_lanes(const Acc (&lanes)[L]) {
  Acc total = 0;
  for (int j = 0; j < L; ++j) total += lanes[j];
  return total;
}

// Sums f(i) over [0, length) with kLanes independent accumulators.
template <typename Acc, typename F>
inline Acc lane_reduce(int64_t length, F&& f) {
  constexpr int L = kLanes<Acc>;
  Acc lanes[L] = {};
  int64_t i = 0;
  for (; i + L <= length; i += L) {
    for (int j = 0; j < L; ++j) lanes[j] += f(i + j);
  }
  for (int j = 0; i < length; ++i, ++j) lanes[j] += f(i);
  return sum_lanes(lanes);
}

// K sums in one sweep over [0, length): terms(i, t) writes element i's K terms into t.
template <typename Acc, int K, typename F>
inline void lane_reduce_many(int64_t length, F&& terms, Acc (&sums)[K]) {
  constexpr int L = kLanes<Acc>;
  Acc lanes[K][L] = {};
  int64_t i = 0;
  for (; i + L <= length; i += L) {
    for (int j = 0; j < L; ++j) {
      Acc t[K];
      terms(i + j, t);
      for (int k = 0; k < K; ++k) lanes[k][j] += t[k];
    }
  }
  for (int j = 0; i < length; ++i, ++j) {
    Acc t[K];
    terms(i, t);
    for (int k = 0; k < K; ++k) lanes[k][j] += t[k];
  }
  for (int k = 0; k < K; ++k) sums[k] = sum_lanes(lanes[k]);
}

// Mean and M2 of a contiguous run, two passes over a cache-resident chunk. The first pass's
// mean is rounded to Acc; the second also sums the deviations from it, which are exact for a
// near-constant run, and so recovers that rounding. Without it a float32 mean error of half
// an ulp, times rstd ~ 1/sqrt(eps) when var << eps, shows in y at 1e-5.
template <typename T>
inline void run_moments(const T* x, int64_t length, double* mean_out, double* m2_out) {
  using Acc = AccOf<T>;
  const Acc sum = lane_reduce<Acc>(length, [x](int64_t i) { return Element<T>::load(x[i]); });
  const Acc mean = sum / static_cast<Acc>(length);
  Acc sums[2];  // deviation, squared deviation
  lane_reduce_many<Acc, 2>(length, [x, mean](int64_t i, Acc* t) {
    const Acc d = Element<T>::load(x[i]) - mean;
    t[0] = d;
    t[1] = d * d;
  }, sums);
  const double correction = static_cast<double>(sums[0]) / static_cast<double>(length);
  *mean_out = static_cast<double>(mean) + correction;
  *m2_out = static_cast<double>(sums[1]) - static_cast<double>(sums[0]) * correction;
}

// A group's mean and rstd in double.
struct GroupStats {
  double mean, rstd;
};

inline GroupStats stats_of(const Moments& m, double eps) {
  const double var = m.m2 / m.count < 0.0 ? 0.0 : m.m2 / m.count;  // NaN stays NaN
  return {m.mean, 1.0 / std::sqrt(var + eps)};
}

// The fast sums overflow where |x| nears sqrt of the Acc's largest value (float32 from ~1e18,
// float64 from ~1e154): squares, or Acc sums, go infinite. That shows as a non-finite mean or M2.
inline bool overflowed(const Moments& m) { return !std::isfinite(m.mean) || !std::isfinite(m.m2); }

// The overflow fallback (docs/design.md §2): the group's statistics recomputed from x / p, p the
// power of two at or below max|x| (so the division is exact and x / p is in (-2, 2)), two
// passes in double, and rstd formed without var = p²·var_p, which overflows:
// rstd = 1 / hypot(std, √eps), std = p·sqrt(var_p). (Not 1 / (p·sqrt(var_p + eps/p²)): eps/p²
// underflows, and a constant group then gets rstd = inf instead of 1/√eps.) load(i) gives
// element i of the group as double. A group with a non-finite element keeps `fast` (its
// NaN/inf is the right answer).
template <typename Load>
GroupStats rescaled_stats(int64_t count, Load&& load, double eps, GroupStats fast) {
  double max_abs = 0.0;
  for (int64_t i = 0; i < count; ++i) max_abs = std::fmax(max_abs, std::fabs(load(i)));
  if (!std::isfinite(max_abs) || max_abs == 0.0) return fast;
  int exponent;
  std::frexp(max_abs, &exponent);
  const double p = std::ldexp(1.0, exponent - 1), inv_p = std::ldexp(1.0, 1 - exponent);
  double sum = 0.0;
  for (int64_t i = 0; i < count; ++i) sum += load(i) * inv_p;
  const double mean = sum / static_cast<double>(count);
  double dev = 0.0, m2 = 0.0;
  for (int64_t i = 0; i < count; ++i) {
    const double d = load(i) * inv_p - mean;
    dev += d;
    m2 += d * d;
  }
  const double correction = dev / static_cast<double>(count);
  const double var = std::fmax((m2 - dev * correction) / static_cast<double>(count), 0.0);
  return {(mean + correction) * p, 1.0 / std::hypot(p * std::sqrt(var), std::sqrt(eps))};
}

// A double mean split for Acc arithmetic: x - mean = (x - hi) - lo, where x - hi is exact
// for x near the mean (Sterbenz), and lo is folded into the per-channel shift.
template <typename A>
struct SplitMean {
  A hi;
  double lo;
  explicit SplitMean(double mean) : hi(static_cast<A>(mean)), lo(mean - static_cast<double>(hi)) {}
};

// Threads for every parallel region. Not the calling thread's OpenMP default: MXNet sets that to
// 1 on its threads and passes its own count to its kernels, so inheriting it would run this
// library on one core. OMP_NUM_THREADS when set, else every processor.
inline int kernel_threads() {
  static const int threads = [] {
    const char* env = std::getenv("OMP_NUM_THREADS");
    const int requested = env ? std::atoi(env) : 0;
    return requested > 0 ? requested : omp_get_num_procs();
  }();
  return threads;
}

// Threads for a kernel over `elements` values: at most one per kGrain of them, so a small
// tensor skips the fork/join, and on a busy machine does not wait for a descheduled thread.
constexpr int64_t kGrain = 32768;

inline int threads_for(int64_t elements) {
  const int64_t wanted = elements / kGrain > 1 ? elements / kGrain : 1;
  return static_cast<int>(wanted < kernel_threads() ? wanted : kernel_threads());
}

// Elements per statistics chunk: small enough for L1, large enough to amortize the merge.
constexpr int64_t kChunk = 4096;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Channels-last rows (of C elements) per block: kChunk elements, L1-resident between the
// block's passes, but at least kMinBlockRows rows so that a wide C (1024) does not pay its
// per-block group bookkeeping every 4 rows.
constexpr int64_t kMinBlockRows = 16;

inline int64_t rows_per_block(int64_t C) {
  if (C >= kChunk) return 1;
  return kChunk / C > kMinBlockRows ? kChunk / C : kMinBlockRows;
}

}  // namespace GN_KERNEL_ISA
}  // namespace gn

#endif  // GN_MXNET_CPU_COMMON_H_
