// CPU GroupNorm forward: statistics per (n, g) and the affine normalization, fused so a group is
// read from memory once (it stays in cache between the statistics and the normalize pass). The
// fused form's residual add and activation (kAct, a GN_ACT_* code) ride on the normalize pass.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu_common.h"
#include "group_norm_activation.h"
#include "group_norm_cpu.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

// Writes the outputs mean (its Acc rounding) and rstd; returns the mean split for normalizing.
template <typename A>
inline SplitMean<A> finalize(const GroupStats& stats, A* mean, A* rstd) {
  const SplitMean<A> split(stats.mean);
  *mean = split.hi;
  *rstd = static_cast<A>(stats.rstd);
  return split;
}

// A group's statistics from its merged moments; where those overflowed, from the scaled
// recomputation (load(i): element i of the group). The check costs one test per group.
template <typename Load>
inline GroupStats group_stats(const Moments& moments, double eps, int64_t count, Load&& load) {
  const GroupStats fast = stats_of(moments, eps);
  return overflowed(moments) ? rescaled_stats(count, load, eps, fast) : fast;
}

// Element loaders for group_stats: a contiguous group, and group g of a channels-last sample.
template <typename T>
inline auto contiguous(const T* x) {
  return [x](int64_t i) { return static_cast<double>(Element<T>::load(x[i])); };
}

template <typename T>
inline auto channels_last_group(const T* sample, int64_t C, int64_t D, int64_t g) {
  return [=](int64_t i) {
    return static_cast<double>(Element<T>::load(sample[(i / D) * C + g * D + i % D]));
  };
}

// The per-channel shift once the mean's low part is folded in: (x - hi) * a + shift.
template <typename A>
inline A shift_of(double beta, const SplitMean<A>& mean, A a) {
  return static_cast<A>(beta - mean.lo * static_cast<double>(a));
}

// r + k, or null for no residual.
template <typename T>
inline const T* at(const T* r, int64_t k) {
  return r ? r + k : nullptr;
}

// y = act((x - mean) * a + shift [+ r]) over one contiguous run, a = gamma * rstd. Folding mean
// into the shift instead (x * a + b) would cancel badly when rstd is large (near-constant groups).
template <int kAct, typename T>
inline void affine_run(const T* x, const T* r, T* y, int64_t length, AccOf<T> mean, AccOf<T> a,
                       AccOf<T> beta) {
  if (r) {
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) {
      y[i] = Element<T>::store(gn_act::apply<kAct>((Element<T>::load(x[i]) - mean) * a + beta +
                                                   Element<T>::load(r[i])));
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) {
    y[i] = Element<T>::store(gn_act::apply<kAct>((Element<T>::load(x[i]) - mean) * a + beta));
  }
}

// Channels-first rows of one group: D rows of S elements, channel c = first_channel + d.
template <int kAct, typename T, typename P>
inline void normalize_group(const T* x, const T* r, T* y, const P* gamma, const P* beta,
                            int64_t D, int64_t S, const SplitMean<AccOf<T>>& mean,
                            AccOf<T> rstd) {
  using Acc = AccOf<T>;
  for (int64_t d = 0; d < D; ++d) {
    const Acc a = static_cast<Acc>(Element<P>::load(gamma[d])) * rstd;
    const double b = static_cast<double>(Element<P>::load(beta[d]));
    affine_run<kAct>(x + d * S, at(r, d * S), y + d * S, S, mean.hi, a, shift_of(b, mean, a));
  }
}

template <int kAct, typename T, typename P>
void forward_channels_first(const T* x, const P* gamma, const P* beta, const T* r, T* y,
                            AccOf<T>* mean,
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
      const SplitMean<AccOf<T>> split =
          finalize(group_stats(moments, eps, M, contiguous(xg)), mean + t, rstd + t);
      const int64_t first_channel = (t % G) * D;
      normalize_group<kAct>(xg, at(r, t * M), y + t * M, gamma + first_channel,
                            beta + first_channel, D, S, split, rstd[t]);
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
    mean_lo[t] = finalize(group_stats(moments, eps, M, contiguous(x + t * M)), mean + t,
                          rstd + t).lo;
  }
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    const int64_t t = row / D, c = row % C;
    using Acc = AccOf<T>;
    const Acc a = static_cast<Acc>(Element<P>::load(gamma[c])) * rstd[t];
    const double b = static_cast<double>(Element<P>::load(beta[c]));
    affine_run<kAct>(x + row * S, at(r, row * S), y + row * S, S, mean[t], a,
                     static_cast<Acc>(b - mean_lo[t] * static_cast<double>(a)));
  }
}

// Channels-last scratch of one thread: per-channel sums, deviations and block group means.
template <typename Acc>
struct ChannelScratch {
  std::vector<Acc> sum, dev, mean;
  explicit ChannelScratch(int64_t C) : sum(C), dev(C), mean(C) {}
};

// Moments of each group over block_rows rows of C channels, two passes over the cache-resident
// block; out[2g] = mean (its Acc rounding corrected by the deviations' sum), out[2g+1] = M2.
template <typename T>
void block_moments(const T* xb, int64_t block_rows, int64_t C, int64_t G,
                   ChannelScratch<AccOf<T>>& scratch, double* out) {
  using Acc = AccOf<T>;
  const int64_t D = C / G;
  Acc* sum = scratch.sum.data();
  Acc* dev = scratch.dev.data();
  Acc* centre = scratch.mean.data();
  std::fill(sum, sum + C, Acc(0));
  for (int64_t r = 0; r < block_rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sum[c] += Element<T>::load(xb[r * C + c]);
  }
  const Acc count = static_cast<Acc>(block_rows * D);
  for (int64_t g = 0; g < G; ++g) {
    Acc group_sum = 0;
    for (int64_t d = 0; d < D; ++d) group_sum += sum[g * D + d];
    const Acc group_mean = group_sum / count;
    for (int64_t d = 0; d < D; ++d) centre[g * D + d] = group_mean;
    out[2 * g] = static_cast<double>(group_mean);
  }
  std::fill(sum, sum + C, Acc(0));
  std::fill(dev, dev + C, Acc(0));
  for (int64_t r = 0; r < block_rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const Acc deviation = Element<T>::load(xb[r * C + c]) - centre[c];
      dev[c] += deviation;
      sum[c] += deviation * deviation;
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    double group_dev = 0.0, group_m2 = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      group_dev += static_cast<double>(dev[g * D + d]);
      group_m2 += static_cast<double>(sum[g * D + d]);
    }
    const double correction = group_dev / static_cast<double>(count);
    out[2 * g] += correction;
    out[2 * g + 1] = group_m2 - group_dev * correction;
  }
}

// Finalizes group g of one sample and writes its channels' rows of affine (3, C): mean hi,
// gamma * rstd, shift.
template <typename P, typename Acc>
void group_affine(const GroupStats& stats, const P* gamma, const P* beta, int64_t g,
                  int64_t D, int64_t C, Acc* mean, Acc* rstd, Acc* affine) {
  const SplitMean<Acc> split = finalize(stats, mean, rstd);
  for (int64_t c = g * D; c < (g + 1) * D; ++c) {
    const Acc a = static_cast<Acc>(Element<P>::load(gamma[c])) * *rstd;
    affine[c] = split.hi;
    affine[C + c] = a;
    affine[2 * C + c] = shift_of(static_cast<double>(Element<P>::load(beta[c])), split, a);
  }
}

template <int kAct, typename T>
void normalize_rows(const T* x, const T* residual, T* y, int64_t rows, int64_t C,
                    const AccOf<T>* affine) {
  const AccOf<T>* m = affine;
  const AccOf<T>* a = affine + C;
  const AccOf<T>* b = affine + 2 * C;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = r * C;
    if (residual) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        y[row + c] = Element<T>::store(gn_act::apply<kAct>(
            (Element<T>::load(x[row + c]) - m[c]) * a[c] + b[c] +
            Element<T>::load(residual[row + c])));
      }
      continue;
    }
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      y[row + c] = Element<T>::store(
          gn_act::apply<kAct>((Element<T>::load(x[row + c]) - m[c]) * a[c] + b[c]));
    }
  }
}

// Channels-last: x is (N, S, C), and every group spans a whole sample. With a sample per
// thread, each task takes its sample's moments block by block, then normalizes it while it
// is still in L2/L3, so x comes from memory once. With fewer samples than threads, blocks of
// rows are spread over the threads and x is read twice.
template <int kAct, typename T, typename P>
void forward_channels_last(const T* x, const P* gamma, const P* beta, const T* r, T* y,
                           AccOf<T>* mean,
                           AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
                           double eps, double* workspace) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, rows = rows_per_block(C), blocks = ceil_div(S, rows);
  const int threads = threads_for(N * C * S);
  if (N >= threads) {
#pragma omp parallel num_threads(threads)
    {
      ChannelScratch<Acc> scratch(C);
      // Not a std::vector<double>: GCC cloned its constructor (.constprop) in this TU, a
      // function outside gn::avx2 with AVX code in it (test_cpu_build).
      std::unique_ptr<double[]> block(new double[2 * G]);
      std::vector<Moments> groups(G);
      std::vector<Acc> affine(3 * C);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        std::fill(groups.begin(), groups.end(), Moments());
        for (int64_t s0 = 0; s0 < S; s0 += rows) {
          const int64_t block_rows = std::min(rows, S - s0);
          block_moments(x + (n * S + s0) * C, block_rows, C, G, scratch, block.get());
          for (int64_t g = 0; g < G; ++g) {
            groups[g].merge(static_cast<double>(block_rows * D), block[2 * g], block[2 * g + 1]);
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          const GroupStats stats = group_stats(groups[g], eps, S * D,
                                               channels_last_group(x + n * S * C, C, D, g));
          group_affine(stats, gamma, beta, g, D, C, mean + n * G + g, rstd + n * G + g,
                       affine.data());
        }
        normalize_rows<kAct>(x + n * S * C, at(r, n * S * C), y + n * S * C, S, C,
                             affine.data());
      }
    }
    return;
  }
  double* moments_of_blocks = workspace;                                        // (N, blocks, G, 2)
  Acc* affine = reinterpret_cast<Acc*>(moments_of_blocks + N * blocks * G * 2);  // (N, 3, C)
#pragma omp parallel num_threads(threads)
  {
    ChannelScratch<Acc> scratch(C);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N * blocks; ++i) {
      const int64_t n = i / blocks, s0 = (i % blocks) * rows;
      block_moments(x + (n * S + s0) * C, std::min(rows, S - s0), C, G, scratch,
                    moments_of_blocks + i * G * 2);
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * G; ++t) {
      const int64_t n = t / G, g = t % G;
      Moments moments;
      for (int64_t b = 0; b < blocks; ++b) {
        const double* in = moments_of_blocks + ((n * blocks + b) * G + g) * 2;
        const int64_t block_rows = std::min(S, (b + 1) * rows) - b * rows;
        moments.merge(static_cast<double>(block_rows * D), in[0], in[1]);
      }
      const GroupStats stats =
          group_stats(moments, eps, S * D, channels_last_group(x + n * S * C, C, D, g));
      group_affine(stats, gamma, beta, g, D, C, mean + t, rstd + t, affine + n * 3 * C);
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N * blocks; ++i) {
      const int64_t n = i / blocks, s0 = (i % blocks) * rows;
      normalize_rows<kAct>(x + (n * S + s0) * C, at(r, (n * S + s0) * C),
                           y + (n * S + s0) * C, std::min(rows, S - s0), C, affine + n * 3 * C);
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

namespace {

template <int kAct, typename T, typename P>
void forward_layout(const T* x, const P* gamma, const P* beta, const T* r, T* y, AccOf<T>* mean,
                    AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
                    int channels_last, double eps, double* ws) {
  if (channels_last) {
    forward_channels_last<kAct>(x, gamma, beta, r, y, mean, rstd, N, C, S, G, eps, ws);
  } else {
    forward_channels_first<kAct>(x, gamma, beta, r, y, mean, rstd, N, C, S, G, eps, ws);
  }
}

}  // namespace

template <typename T, typename P>
void forward(const T* x, const P* gamma, const P* beta, const T* residual, T* y,
             AccOf<T>* mean, AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
             int channels_last, int act, double eps, void* workspace) {
  double* ws = static_cast<double*>(workspace);
  const auto run = [&](auto kernel) {
    kernel(x, gamma, beta, residual, y, mean, rstd, N, C, S, G, channels_last, eps, ws);
  };
  if (act == GN_ACT_RELU) return run(forward_layout<GN_ACT_RELU, T, P>);
  if (act == GN_ACT_SILU) return run(forward_layout<GN_ACT_SILU, T, P>);
  run(forward_layout<GN_ACT_NONE, T, P>);
}

#define GN_INSTANTIATE_FORWARD(T, P)                                                         \
  template void forward<T, P>(const T*, const P*, const P*, const T*, T*, AccOf<T>*,        \
                              AccOf<T>*, int64_t, int64_t, int64_t, int64_t, int, int,       \
                              double, void*);
GN_INSTANTIATE_FORWARD(float, float)
GN_INSTANTIATE_FORWARD(double, double)
GN_INSTANTIATE_FORWARD(Half, Half)
GN_INSTANTIATE_FORWARD(Half, float)
#undef GN_INSTANTIATE_FORWARD

}  // namespace GN_KERNEL_ISA
}  // namespace gn
