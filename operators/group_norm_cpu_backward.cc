// CPU GroupNorm backward (docs/design.md §2): per (n, c) sums ds = Σ dy·(x-mean) and db = Σ dy,
// per (n, g) coefficients, then one elementwise pass
//   dx = A[c]·(dy - m[g]) + B[g]·(x - mean) + K[c],  A[c] = rstd·gamma[c], m[g] = mean_g(dy).
// Centering on the forward mean avoids cancellation when |mean| >> std. That mean arrives
// rounded to Acc, so the sums also take dev = Σ (x-mean), whose group total gives the exact
// mean's offset r; ds and K are re-centred by it (a float32 mean's rounding times rstd^2
// would otherwise show in dx when var << eps).
#include <omp.h>

#include <algorithm>
#include <vector>

#include "cpu_common.h"
#include "group_norm_cpu.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

// dy is centred on its group mean m, as x is on its own. dx's leading terms rstd·gamma[c]·dy and
// rstd·mean_g(gamma·dy) cancel exactly in a one-element group (dx = 0) and nearly in many others;
// formed apart, one per element in Acc and one per group in double, their roundings differ and
// leave rstd·|gamma·dy|·ulp behind (6e-5 in float32 where dx is 0). Centred, dy - m is exact
// there and the rest, rstd·(gamma[c]·m - mean_g(gamma·dy)), is a per-channel constant taken
// relative to the group's first gamma g0:
//   rstd·((gamma[c] - g0)·m + g0·(m - mean_g(dy)) - Σ_d (gamma_d - g0)·db_d / M).
// With one channel per group each product in it has a factor that is exactly 0, however the
// compiler fuses multiplies into adds (GCC does, across statements, at -O3 with FMA).
struct GroupCoefficients {
  double x_coef;       // B: dx = A·(dy - dy_centre) + x_coef·(x - mean) + channel_constant
  double dy_centre;    // m, already rounded to Acc: the elementwise pass subtracts this value
  double gamma_pivot;  // g0
  double dy_slope;     // rstd·m
  double constant;     // the channel-independent rest, B·r included

  double channel_constant(double gamma_c) const {
    return (gamma_c - gamma_pivot) * dy_slope + constant;
  }
};

// One group's D channel sums (ds, db, dev and gamma at its first channel, count elements):
// re-centres ds on the exact mean, Σdy·(x-m-r) = ds - r·db with r = Σdev / count (param_grads
// reads the result), and returns the group's dx coefficients.
template <typename Acc, typename P>
GroupCoefficients recentred_group_coefficients(double* ds, const double* db, const double* dev,
                                               const P* gamma, double rstd, int64_t D,
                                               int64_t count) {
  const double inv_count = 1.0 / static_cast<double>(count);
  const double gamma_pivot = static_cast<double>(Element<P>::load(gamma[0]));
  double dev_total = 0.0, db_total = 0.0, db_spread = 0.0;  // db_spread = Σ (gamma_d - g0)·db_d
  for (int64_t d = 0; d < D; ++d) {
    dev_total += dev[d];
    db_total += db[d];
    db_spread += (static_cast<double>(Element<P>::load(gamma[d])) - gamma_pivot) * db[d];
  }
  const double offset = dev_total * inv_count;
  double gamma_ds = 0.0;
  for (int64_t d = 0; d < D; ++d) {
    ds[d] -= offset * db[d];
    gamma_ds += static_cast<double>(Element<P>::load(gamma[d])) * ds[d];
  }
  const double x_coef = -rstd * rstd * rstd * gamma_ds * inv_count;
  const double mean_dy = db_total * inv_count;
  const double centre = static_cast<double>(static_cast<Acc>(mean_dy));
  return {x_coef, centre, gamma_pivot, rstd * centre,
          rstd * (gamma_pivot * (centre - mean_dy) - db_spread * inv_count) - x_coef * offset};
}

template <typename T>
inline void row_sums(const T* dy, const T* x, int64_t length, AccOf<T> mean, double* ds,
                     double* db, double* dev) {
  using Acc = AccOf<T>;
  Acc sums[3];
  lane_reduce_many<Acc, 3>(length, [dy, x, mean](int64_t i, Acc* t) {
    const Acc g = Element<T>::load(dy[i]), centred = Element<T>::load(x[i]) - mean;
    t[0] = g * centred;
    t[1] = g;
    t[2] = centred;
  }, sums);
  *ds = static_cast<double>(sums[0]);
  *db = static_cast<double>(sums[1]);
  *dev = static_cast<double>(sums[2]);
}

// dx over one channel's run of a group with coefficients k, dy_coef = rstd·gamma[c].
template <typename T>
inline void input_grad_run(const T* dy, const T* x, T* dx, int64_t length, AccOf<T> dy_coef,
                           AccOf<T> mean, double gamma_c, const GroupCoefficients& k) {
  using Acc = AccOf<T>;
  const Acc dy_centre = static_cast<Acc>(k.dy_centre), x_coef = static_cast<Acc>(k.x_coef);
  const Acc constant = static_cast<Acc>(k.channel_constant(gamma_c));
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) {
    dx[i] = Element<T>::store(dy_coef * (Element<T>::load(dy[i]) - dy_centre) +
                              x_coef * (Element<T>::load(x[i]) - mean) + constant);
  }
}

// dgamma[c] = Σ_n ds[n,c]·rstd[n,g], dbeta[c] = Σ_n db[n,c].
template <typename P, typename A>
void param_grads(const double* ds, const double* db, const A* rstd, P* dgamma, P* dbeta,
                 int64_t N, int64_t C, int64_t G) {
  const int64_t D = C / G;
  const int threads = threads_for(N * C);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t c = 0; c < C; ++c) {
    double gamma_grad = 0.0, beta_grad = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      gamma_grad += ds[n * C + c] * static_cast<double>(rstd[n * G + c / D]);
      beta_grad += db[n * C + c];
    }
    if (dgamma) dgamma[c] = Element<P>::store(static_cast<AccOf<P>>(gamma_grad));
    if (dbeta) dbeta[c] = Element<P>::store(static_cast<AccOf<P>>(beta_grad));
  }
}

template <typename T, typename P>
void backward_channels_first(const T* dy, const T* x, const P* gamma, const AccOf<T>* mean,
                             const AccOf<T>* rstd, T* dx, double* ds, double* db,
                             double* dev, GroupCoefficients* coefs, int64_t N, int64_t C,
                             int64_t S, int64_t G) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, M = D * S, tasks = N * G;
  const int threads = threads_for(N * C * S);
  if (tasks >= threads) {
    // One task per group: its dy and x stay in cache between the sums and the dx pass.
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t first_channel = (t % G) * D, offset = t * M;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t row = t * D + d;
        row_sums(dy + offset + d * S, x + offset + d * S, S, mean[t], ds + row, db + row,
                 dev + row);
      }
      const GroupCoefficients k = recentred_group_coefficients<Acc>(
          ds + t * D, db + t * D, dev + t * D, gamma + first_channel, rstd[t], D, M);
      if (!dx) continue;
      for (int64_t d = 0; d < D; ++d) {
        const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[first_channel + d]));
        input_grad_run(dy + offset + d * S, x + offset + d * S, dx + offset + d * S, S,
                       rstd[t] * gamma_c, mean[t], static_cast<double>(gamma_c), k);
      }
    }
    return;
  }
  // Fewer groups than threads: parallelize over channel rows instead.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    row_sums(dy + row * S, x + row * S, S, mean[row / D], ds + row, db + row, dev + row);
  }
  for (int64_t t = 0; t < tasks; ++t) {
    coefs[t] = recentred_group_coefficients<Acc>(ds + t * D, db + t * D, dev + t * D,
                                                 gamma + (t % G) * D, rstd[t], D, M);
  }
  if (!dx) return;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    const int64_t t = row / D;
    const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[row % C]));
    input_grad_run(dy + row * S, x + row * S, dx + row * S, S, rstd[t] * gamma_c, mean[t],
                   static_cast<double>(gamma_c), coefs[t]);
  }
}

// Channels-last pieces per sample when samples are fewer than threads: enough for every
// thread to have work and no more, since each piece writes 3·C partial sums.
inline int64_t channels_last_pieces(int64_t N, int threads) {
  return N >= threads ? 1 : ceil_div(threads, N);
}

inline int64_t channels_last_partials(int64_t N, int64_t C, int64_t S) {
  return N * channels_last_pieces(N, threads_for(N * C * S)) * 3 * C;
}

template <typename Acc>
struct SumScratch {
  std::vector<Acc> dy_centred, dy, centred, mean;
  explicit SumScratch(int64_t C) : dy_centred(C), dy(C), centred(C), mean(C) {}
};

// Adds Σ dy·(x-mean), Σ dy and Σ (x-mean) per channel over rows [s0, s1) of one sample (dy, x
// at its first row) into the rows of out (3, C): float within a cache-resident block of rows,
// double across blocks.
template <typename T>
void add_channel_sums(const T* dy, const T* x, const AccOf<T>* sample_mean, int64_t s0,
                      int64_t s1, int64_t C, int64_t G, SumScratch<AccOf<T>>& scratch,
                      double* out) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, rows = rows_per_block(C);
  Acc* centre = scratch.mean.data();
  for (int64_t c = 0; c < C; ++c) centre[c] = sample_mean[c / D];
  for (int64_t b0 = s0; b0 < s1; b0 += rows) {
    Acc* dy_centred = scratch.dy_centred.data();
    Acc* dy_sum = scratch.dy.data();
    Acc* centred_sum = scratch.centred.data();
    std::fill(dy_centred, dy_centred + C, Acc(0));
    std::fill(dy_sum, dy_sum + C, Acc(0));
    std::fill(centred_sum, centred_sum + C, Acc(0));
    for (int64_t s = b0; s < std::min(s1, b0 + rows); ++s) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const Acc g = Element<T>::load(dy[s * C + c]);
        const Acc centred = Element<T>::load(x[s * C + c]) - centre[c];
        dy_centred[c] += g * centred;
        dy_sum[c] += g;
        centred_sum[c] += centred;
      }
    }
    for (int64_t c = 0; c < C; ++c) {
      out[c] += static_cast<double>(dy_centred[c]);
      out[C + c] += static_cast<double>(dy_sum[c]);
      out[2 * C + c] += static_cast<double>(centred_sum[c]);
    }
  }
}

// Channels-last dx coefficient rows (kCoefRows, C): dy coef, dy centre, x coef, mean, constant.
constexpr int64_t kCoefRows = 5;

// Re-centres group g's sums of one sample (ds, db, dev at its first channel) and, when coef is
// given, writes its channels' columns of the dx coefficient rows.
template <typename P, typename Acc>
void group_input_grad_coefs(double* ds, const double* db, const double* dev, const P* gamma,
                            Acc mean, Acc rstd, int64_t g, int64_t D, int64_t S, int64_t C,
                            Acc* coef) {
  const int64_t first = g * D;
  const GroupCoefficients k = recentred_group_coefficients<Acc>(
      ds + first, db + first, dev + first, gamma + first, rstd, D, D * S);
  if (!coef) return;
  for (int64_t c = first; c < first + D; ++c) {
    const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[c]));
    coef[c] = rstd * gamma_c;
    coef[C + c] = static_cast<Acc>(k.dy_centre);
    coef[2 * C + c] = static_cast<Acc>(k.x_coef);
    coef[3 * C + c] = mean;
    coef[4 * C + c] = static_cast<Acc>(k.channel_constant(static_cast<double>(gamma_c)));
  }
}

template <typename T>
void input_grad_rows(const T* dy, const T* x, T* dx, int64_t rows, int64_t C,
                     const AccOf<T>* coef) {
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      dx[i] = Element<T>::store(coef[c] * (Element<T>::load(dy[i]) - coef[C + c]) +
                                coef[2 * C + c] * (Element<T>::load(x[i]) - coef[3 * C + c]) +
                                coef[4 * C + c]);
    }
  }
}

// Channels-last (N, S, C). With a sample per thread, each task sums its sample, then writes its
// dx while the sample's x and dy are still in L2/L3. With fewer samples than threads, pieces of
// samples are summed in parallel and reduced per (n, c), and dx is a separate pass.
template <typename T, typename P>
void backward_channels_last(const T* dy, const T* x, const P* gamma, const AccOf<T>* mean,
                            const AccOf<T>* rstd, T* dx, double* ds, double* db,
                            double* dev, double* partials, AccOf<T>* channel_coefs, int64_t N,
                            int64_t C, int64_t S, int64_t G) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, rows = rows_per_block(C), blocks = ceil_div(S, rows);
  const int threads = threads_for(N * C * S);
  if (N >= threads) {
#pragma omp parallel num_threads(threads)
    {
      SumScratch<Acc> scratch(C);
      std::vector<double> sums(3 * C);
      std::vector<Acc> coef(kCoefRows * C);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t offset = n * S * C;
        std::fill(sums.begin(), sums.end(), 0.0);
        add_channel_sums(dy + offset, x + offset, mean + n * G, 0, S, C, G, scratch,
                         sums.data());
        std::copy(sums.begin(), sums.begin() + C, ds + n * C);
        std::copy(sums.begin() + C, sums.begin() + 2 * C, db + n * C);
        std::copy(sums.begin() + 2 * C, sums.end(), dev + n * C);
        for (int64_t g = 0; g < G; ++g) {
          group_input_grad_coefs(ds + n * C, db + n * C, dev + n * C, gamma, mean[n * G + g],
                                 rstd[n * G + g], g, D, S, C, dx ? coef.data() : nullptr);
        }
        if (dx) input_grad_rows(dy + offset, x + offset, dx + offset, S, C, coef.data());
      }
    }
    return;
  }
  const int64_t pieces = channels_last_pieces(N, threads);
  const int64_t rows_per_piece = ceil_div(blocks, pieces) * rows;
#pragma omp parallel num_threads(threads)
  {
    SumScratch<Acc> scratch(C);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < N * pieces; ++i) {
      const int64_t n = i / pieces, s0 = std::min(S, (i % pieces) * rows_per_piece);
      double* out = partials + i * 3 * C;
      std::fill(out, out + 3 * C, 0.0);
      add_channel_sums(dy + n * S * C, x + n * S * C, mean + n * G, s0,
                       std::min(S, s0 + rows_per_piece), C, G, scratch, out);
    }
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < N * C; ++nc) {
      const int64_t n = nc / C, c = nc % C;
      double total_ds = 0.0, total_db = 0.0, total_dev = 0.0;
      for (int64_t p = 0; p < pieces; ++p) {
        const double* in = partials + (n * pieces + p) * 3 * C;
        total_ds += in[c];
        total_db += in[C + c];
        total_dev += in[2 * C + c];
      }
      ds[nc] = total_ds;
      db[nc] = total_db;
      dev[nc] = total_dev;
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * G; ++t) {
      const int64_t n = t / G;
      group_input_grad_coefs(ds + n * C, db + n * C, dev + n * C, gamma, mean[t], rstd[t], t % G,
                             D, S, C, dx ? channel_coefs + n * kCoefRows * C : nullptr);
    }
    if (dx) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N * blocks; ++i) {
        const int64_t n = i / blocks, s0 = (i % blocks) * rows, offset = (n * S + s0) * C;
        input_grad_rows(dy + offset, x + offset, dx + offset, std::min(rows, S - s0), C,
                        channel_coefs + n * kCoefRows * C);
      }
    }
  }
}

}  // namespace

size_t backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last) {
  int64_t doubles = 3 * N * C;  // ds, db, dev
  if (channels_last) {
    doubles += channels_last_partials(N, C, S) + N * kCoefRows * C;
  } else {
    // Coefficients per group, kept between passes only where groups are split (fewer groups
    // than threads: backward_channels_first).
    if (N * G < threads_for(N * C * S)) {
      doubles += N * G * static_cast<int64_t>(sizeof(GroupCoefficients) / sizeof(double));
    }
  }
  return sizeof(double) * static_cast<size_t>(doubles);
}

template <typename T, typename P>
void backward(const T* dy, const T* x, const P* gamma, const AccOf<T>* mean,
              const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta, int64_t N, int64_t C,
              int64_t S, int64_t G, int channels_last, void* workspace) {
  double* ds = static_cast<double*>(workspace);
  double* db = ds + N * C;
  double* dev = db + N * C;
  double* rest = dev + N * C;
  if (channels_last) {
    double* partials = rest;
    AccOf<T>* channel_coefs =
        reinterpret_cast<AccOf<T>*>(partials + channels_last_partials(N, C, S));
    backward_channels_last(dy, x, gamma, mean, rstd, dx, ds, db, dev, partials, channel_coefs,
                           N, C, S, G);
  } else {
    backward_channels_first(dy, x, gamma, mean, rstd, dx, ds, db, dev,
                            reinterpret_cast<GroupCoefficients*>(rest), N, C, S, G);
  }
  if (dgamma || dbeta) param_grads(ds, db, rstd, dgamma, dbeta, N, C, G);
}

#define GN_INSTANTIATE_BACKWARD(T, P)                                                        \
  template void backward<T, P>(const T*, const T*, const P*, const AccOf<T>*,               \
                               const AccOf<T>*, T*, P*, P*, int64_t, int64_t, int64_t,       \
                               int64_t, int, void*);
GN_INSTANTIATE_BACKWARD(float, float)
GN_INSTANTIATE_BACKWARD(double, double)
GN_INSTANTIATE_BACKWARD(Half, Half)
GN_INSTANTIATE_BACKWARD(Half, float)
#undef GN_INSTANTIATE_BACKWARD

}  // namespace GN_KERNEL_ISA
}  // namespace gn
