// CPU GroupNorm forward: statistics per (n, g) and the affine normalization, fused so a group is
// read from memory once (it stays in cache between the statistics and the normalize pass).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "group_norm_cpu.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

// Writes the outputs mean (its Acc rounding) and rstd; returns the mean split for normalizing.
template <typename A>
inline SplitMean<A> finalize(const Moments& moments, double eps, A* mean, A* rstd) {
  const double var = std::max(moments.m2 / moments.count, 0.0);
  const SplitMean<A> split(moments.mean);
  *mean = split.hi;
  *rstd = static_cast<A>(1.0 / std::sqrt(var + eps));
  return split;
}

// The per-channel shift once the mean's low part is folded in: (x - hi) * a + shift.
template <typename A>
inline A shift_of(double beta, const SplitMean<A>& mean, A a) {
  return static_cast<A>(beta - mean.lo * static_cast<double>(a));
}

// y = (x - mean) * a + shift over one contiguous run, a = gamma * rstd. Folding mean into the
// shift instead (x * a + b) would cancel badly when rstd is large (near-constant groups).
template <typename T>
inline void affine_run(const T* x, T* y, int64_t length, AccOf<T> mean, AccOf<T> a,
                       AccOf<T> beta) {
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) {
    y[i] = Element<T>::store((Element<T>::load(x[i]) - mean) * a + beta);
  }
}

// Channels-first rows of one group: D rows of S elements, channel c = first_channel + d.
template <typename T, typename P>
inline void normalize_group(const T* x, T* y, const P* gamma, const P* beta, int64_t D,
                            int64_t S, const SplitMean<AccOf<T>>& mean, AccOf<T> rstd) {
  using Acc = AccOf<T>;
  for (int64_t d = 0; d < D; ++d) {
    const Acc a = static_cast<Acc>(Element<P>::load(gamma[d])) * rstd;
    const double b = static_cast<double>(Element<P>::load(beta[d]));
    affine_run(x + d * S, y + d * S, S, mean.hi, a, shift_of(b, mean, a));
  }
}

template <typename T, typename P>
void forward_channels_first(const T* x, const P* gamma, const P* beta, T* y, AccOf<T>* mean,
                            AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
                            double eps, double* workspace) {
  const int64_t D = C / G, M = D * S, tasks = N * G;
  const int threads = threads_for(N * C * S);
  const int64_t chunks = ceil_div(M, kChunk);
  if (tasks >= threads || chunks == 1) {
    // Group (n, g) is the contiguous run [t*M, (t+1)*M): statistics, then normalize in cache.
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; ++t) {
      const T* xg = x + t * M;
      Moments moments;
      for (int64_t offset = 0; offset < M; offset += kChunk) {
        const int64_t length = std::min(kChunk, M - offset);
        double chunk_mean, chunk_m2;
        run_moments(xg + offset, length, &chunk_mean, &chunk_m2);
        moments.merge(static_cast<double>(length), chunk_mean, chunk_m2);
      }
      const SplitMean<AccOf<T>> split = finalize(moments, eps, mean + t, rstd + t);
      const int64_t first_channel = (t % G) * D;
      normalize_group(xg, y + t * M, gamma + first_channel, beta + first_channel, D, S, split,
                      rstd[t]);
    }
    return;
  }
  // Fewer groups than threads: split each group's statistics across threads.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < tasks * chunks; ++i) {
    const int64_t t = i / chunks, offset = (i % chunks) * kChunk;
    run_moments(x + t * M + offset, std::min(kChunk, M - offset), workspace + 2 * i,
                workspace + 2 * i + 1);
  }
  double* mean_lo = workspace + 2 * tasks * chunks;  // (N, G)
  for (int64_t t = 0; t < tasks; ++t) {
    Moments moments;
    for (int64_t k = 0; k < chunks; ++k) {
      const double length = static_cast<double>(std::min(kChunk, M - k * kChunk));
      moments.merge(length, workspace[2 * (t * chunks + k)], workspace[2 * (t * chunks + k) + 1]);
    }
    mean_lo[t] = finalize(moments, eps, mean + t, rstd + t).lo;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    const int64_t t = row / D, c = row % C;
    using Acc = AccOf<T>;
    const Acc a = static_cast<Acc>(Element<P>::load(gamma[c])) * rstd[t];
    const double b = static_cast<double>(Element<P>::load(beta[c]));
    affine_run(x + row * S, y + row * S, S, mean[t], a,
               static_cast<Acc>(b - mean_lo[t] * static_cast<double>(a)));
  }
}

// Channels-last: x is (N, S, C). Work is split into blocks of rows; each block yields moments
// per group (two passes over the cache-resident block), merged per (n, g) afterwards.
template <typename T, typename P>
void forward_channels_last(const T* x, const P* gamma, const P* beta, T* y, AccOf<T>* mean,
                           AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
                           double eps, double* workspace) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, rows = rows_per_block(C), blocks = ceil_div(S, rows);
  const int threads = threads_for(N * C * S);
  double* block_moments = workspace;                         // (N, blocks, G, 2)
  Acc* affine = reinterpret_cast<Acc*>(block_moments + N * blocks * G * 2);  // (N, 3, C)
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> channel_sum(C), channel_mean(C), channel_dev(C);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N * blocks; ++i) {
      const int64_t n = i / blocks, s0 = (i % blocks) * rows, s1 = std::min(S, s0 + rows);
      const T* xb = x + (n * S + s0) * C;
      const int64_t block_rows = s1 - s0;
      std::fill(channel_sum.begin(), channel_sum.end(), Acc(0));
      for (int64_t r = 0; r < block_rows; ++r) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) channel_sum[c] += Element<T>::load(xb[r * C + c]);
      }
      double* out = block_moments + i * G * 2;
      const Acc count = static_cast<Acc>(block_rows * D);
      for (int64_t g = 0; g < G; ++g) {
        Acc group_sum = 0;
        for (int64_t d = 0; d < D; ++d) group_sum += channel_sum[g * D + d];
        const Acc group_mean = group_sum / count;
        for (int64_t d = 0; d < D; ++d) channel_mean[g * D + d] = group_mean;
        out[2 * g] = static_cast<double>(group_mean);
      }
      std::fill(channel_sum.begin(), channel_sum.end(), Acc(0));
      std::fill(channel_dev.begin(), channel_dev.end(), Acc(0));
      for (int64_t r = 0; r < block_rows; ++r) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const Acc dev = Element<T>::load(xb[r * C + c]) - channel_mean[c];
          channel_dev[c] += dev;
          channel_sum[c] += dev * dev;
        }
      }
      for (int64_t g = 0; g < G; ++g) {  // the deviations' sum corrects the rounded mean
        double group_dev = 0.0, group_m2 = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          group_dev += static_cast<double>(channel_dev[g * D + d]);
          group_m2 += static_cast<double>(channel_sum[g * D + d]);
        }
        const double correction = group_dev / static_cast<double>(count);
        out[2 * g] += correction;
        out[2 * g + 1] = group_m2 - group_dev * correction;
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * G; ++t) {
      const int64_t n = t / G, g = t % G;
      Moments moments;
      for (int64_t b = 0; b < blocks; ++b) {
        const double* in = block_moments + ((n * blocks + b) * G + g) * 2;
        const int64_t block_rows = std::min(S, (b + 1) * rows) - b * rows;
        moments.merge(static_cast<double>(block_rows * D), in[0], in[1]);
      }
      const SplitMean<Acc> split = finalize(moments, eps, mean + t, rstd + t);
      Acc* rows_of_n = affine + n * 3 * C;  // rows: mean, gamma * rstd, shift
      for (int64_t c = g * D; c < (g + 1) * D; ++c) {
        const Acc a = static_cast<Acc>(Element<P>::load(gamma[c])) * rstd[t];
        rows_of_n[c] = split.hi;
        rows_of_n[C + c] = a;
        rows_of_n[2 * C + c] = shift_of(static_cast<double>(Element<P>::load(beta[c])), split, a);
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N * blocks; ++i) {
      const int64_t n = i / blocks, s0 = (i % blocks) * rows, s1 = std::min(S, s0 + rows);
      const Acc* m = affine + n * 3 * C;
      const Acc* a = m + C;
      const Acc* b = m + 2 * C;
      for (int64_t s = s0; s < s1; ++s) {
        const T* xr = x + (n * S + s) * C;
        T* yr = y + (n * S + s) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          yr[c] = Element<T>::store((Element<T>::load(xr[c]) - m[c]) * a[c] + b[c]);
        }
      }
    }
  }
}

}  // namespace

size_t forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last) {
  if (channels_last) {
    const int64_t blocks = ceil_div(S, rows_per_block(C));
    return sizeof(double) * static_cast<size_t>(N * blocks * G * 2 + N * 3 * C);
  }
  // chunk moments (N, G, chunks, 2), then the means' low parts (N, G)
  return sizeof(double) * static_cast<size_t>(N * G * (ceil_div((C / G) * S, kChunk) * 2 + 1));
}

template <typename T, typename P>
void forward(const T* x, const P* gamma, const P* beta, T* y, AccOf<T>* mean, AccOf<T>* rstd,
             int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, double eps,
             void* workspace) {
  double* ws = static_cast<double*>(workspace);
  if (channels_last) {
    forward_channels_last(x, gamma, beta, y, mean, rstd, N, C, S, G, eps, ws);
  } else {
    forward_channels_first(x, gamma, beta, y, mean, rstd, N, C, S, G, eps, ws);
  }
}

#define GN_INSTANTIATE_FORWARD(T, P)                                                         \
  template void forward<T, P>(const T*, const P*, const P*, T*, AccOf<T>*, AccOf<T>*,       \
                              int64_t, int64_t, int64_t, int64_t, int, double, void*);
GN_INSTANTIATE_FORWARD(float, float)
GN_INSTANTIATE_FORWARD(double, double)
GN_INSTANTIATE_FORWARD(Half, Half)
GN_INSTANTIATE_FORWARD(Half, float)
#undef GN_INSTANTIATE_FORWARD

}  // namespace GN_KERNEL_ISA
}  // namespace gn
