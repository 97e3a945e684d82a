// CPU GroupNorm backward (docs/design.md §2): per (n, c) sums ds = Σ dy·(x-mean) and db = Σ dy,
// per (n, g) coefficients, then one elementwise pass
//   dx = A[c]·(dy - m[g]) + B[g]·(x - mean) + K[c],  A[c] = rstd·gamma[c], m[g] = mean_g(dy).
// Centering on the forward mean avoids cancellation when |mean| >> std. That mean arrives
// rounded to Acc, so the sums also take dev = Σ (x-mean), whose group total gives the exact
// mean's offset r; ds and K are re-centred by it (a float32 mean's rounding times rstd^2
// would otherwise show in dx when var << eps).
// The fused form (kAct, kRes): both passes use dz = dy·act'(z) in place of dy, z recomputed
// from x, mean, rstd, gamma, beta and the residual (gn_act::grad_through); the dx pass also
// writes d residual = dz. No dz pass, no dz buffer.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "group_norm_activation.h"
#include "group_norm_cpu.h"
#include "group_norm_cpu_backward_runs.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

template <int kAct, bool kRes, typename T, typename P>
void backward_channels_first(const T* dy, const T* x, const P* gamma, FusedOperands<T, P> f,
                             const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, double* ds,
                             double* db, double* dev, GroupCoefficients* coefs, int64_t N,
                             int64_t C, int64_t S, int64_t G) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, M = D * S, tasks = N * G;
  const int threads = threads_for(N * C * S);
  if (tasks >= threads) {
    // One task per group: its dy and x stay in cache between the sums and the dx pass.
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t first_channel = (t % G) * D, offset = t * M;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t row = t * D + d, at = offset + d * S;
        const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[first_channel + d]));
        row_sums<kAct, kRes>(dy + at, x + at, f.r_at(at), S, mean[t], rstd[t] * gamma_c,
                             f.shift(first_channel + d), ds + row, db + row, dev + row);
      }
      const GroupCoefficients k = recentred_group_coefficients<Acc>(
          ds + t * D, db + t * D, dev + t * D, gamma + first_channel, rstd[t], D, M);
      if (!dx && !f.dr) continue;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t at = offset + d * S;
        const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[first_channel + d]));
        input_grad_run<kAct, kRes>(dy + at, x + at, f.r_at(at), dx ? dx + at : nullptr,
                                   f.dr_at(at), S, rstd[t] * gamma_c, mean[t], rstd[t],
                                   f.shift(first_channel + d), static_cast<double>(gamma_c), k);
      }
    }
    return;
  }
  // Fewer groups than threads: parallelize over channel rows instead.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[row % C]));
    row_sums<kAct, kRes>(dy + row * S, x + row * S, f.r_at(row * S), S, mean[row / D],
                         rstd[row / D] * gamma_c, f.shift(row % C), ds + row, db + row,
                         dev + row);
  }
  for (int64_t t = 0; t < tasks; ++t) {
    coefs[t] = recentred_group_coefficients<Acc>(ds + t * D, db + t * D, dev + t * D,
                                                 gamma + (t % G) * D, rstd[t], D, M);
  }
  if (!dx && !f.dr) return;
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t row = 0; row < N * C; ++row) {
    const int64_t t = row / D;
    const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[row % C]));
    input_grad_run<kAct, kRes>(dy + row * S, x + row * S, f.r_at(row * S),
                               dx ? dx + row * S : nullptr, f.dr_at(row * S), S,
                               rstd[t] * gamma_c, mean[t], rstd[t], f.shift(row % C),
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
  std::vector<Acc> dy_centred, dy, centred, mean, scale, shift;
  explicit SumScratch(int64_t C)
      : dy_centred(C), dy(C), centred(C), mean(C), scale(C), shift(C) {}
};

// Adds Σ dy·(x-mean), Σ dy and Σ (x-mean) per channel over rows [s0, s1) of one sample (dy, x
// at its first row) into the rows of out (3, C): float within a cache-resident block of rows,
// double across blocks.
// The fused form sums dz for dy (r at the sample's first row; rstd, gamma, beta give z).
template <int kAct, bool kRes, typename T, typename P>
void add_channel_sums(const T* dy, const T* x, const T* r, const AccOf<T>* sample_mean,
                      const AccOf<T>* sample_rstd, const P* gamma, const FusedOperands<T, P>& f,
                      int64_t s0, int64_t s1, int64_t C, int64_t G,
                      SumScratch<AccOf<T>>& scratch, double* out) {
  using Acc = AccOf<T>;
  const int64_t D = C / G, rows = rows_per_block(C);
  Acc* centre = scratch.mean.data();
  Acc* scale = scratch.scale.data();
  Acc* shift = scratch.shift.data();
  for (int64_t c = 0; c < C; ++c) {
    centre[c] = sample_mean[c / D];
    scale[c] = sample_rstd[c / D] * static_cast<Acc>(Element<P>::load(gamma[c]));
    shift[c] = f.shift(c);
  }
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
        const Acc centred = Element<T>::load(x[s * C + c]) - centre[c];
        const Acc g = grad_at<kAct, kRes>(dy, r, s * C + c, centred, scale[c], shift[c]);
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

// Channels-last dx coefficient rows (kCoefRows, C): dy coef, dy centre, x slope, mean, constant,
// beta (z's shift), rstd.
constexpr int64_t kCoefRows = 7;

// Re-centres group g's sums of one sample (ds, db, dev at its first channel) and, when coef is
// given, writes its channels' columns of the dx coefficient rows.
template <typename T, typename P, typename Acc>
void group_input_grad_coefs(double* ds, const double* db, const double* dev, const P* gamma,
                            const FusedOperands<T, P>& f, Acc mean, Acc rstd, int64_t g,
                            int64_t D, int64_t S, int64_t C, Acc* coef) {
  const int64_t first = g * D;
  const GroupCoefficients k = recentred_group_coefficients<Acc>(
      ds + first, db + first, dev + first, gamma + first, rstd, D, D * S);
  if (!coef) return;
  for (int64_t c = first; c < first + D; ++c) {
    const Acc gamma_c = static_cast<Acc>(Element<P>::load(gamma[c]));
    coef[c] = rstd * gamma_c;
    coef[C + c] = static_cast<Acc>(k.dy_centre);
    coef[2 * C + c] = static_cast<Acc>(k.x_slope);
    coef[3 * C + c] = mean;
    coef[4 * C + c] = static_cast<Acc>(k.channel_constant(static_cast<double>(gamma_c)));
    coef[5 * C + c] = f.shift(c);
    coef[6 * C + c] = rstd;
  }
}

// dx (may be null) and d residual (where dr is given) over rows of (rows, C).
template <int kAct, bool kRes, typename T>
void input_grad_rows(const T* dy, const T* x, const T* r, T* dx, T* dr, int64_t rows,
                     int64_t C, const AccOf<T>* coef) {
  using Acc = AccOf<T>;
  auto pass = [&](auto write_dx, auto write_dr) {  // as in input_grad_run
    for (int64_t row = 0; row < rows; ++row) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const int64_t i = row * C + c;
        const Acc centred = Element<T>::load(x[i]) - coef[3 * C + c];
        const Acc g = grad_at<kAct, kRes>(dy, r, i, centred, coef[c], coef[5 * C + c]);
        if constexpr (decltype(write_dr)::value) dr[i] = Element<T>::store(g);
        if constexpr (decltype(write_dx)::value) {
          dx[i] = Element<T>::store(coef[c] * (g - coef[C + c]) +
                                    coef[2 * C + c] * (centred * coef[6 * C + c]) +
                                    coef[4 * C + c]);
        }
      }
    }
  };
  with_write_flags<kRes>(dx, dr, pass);
}

// Channels-last (N, S, C). With a sample per thread, each task sums its sample, then writes its
// dx while the sample's x and dy are still in L2/L3. With fewer samples than threads, pieces of
// samples are summed in parallel and reduced per (n, c), and dx is a separate pass.
template <int kAct, bool kRes, typename T, typename P>
void backward_channels_last(const T* dy, const T* x, const P* gamma, FusedOperands<T, P> f,
                            const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, double* ds,
                            double* db, double* dev, double* partials,
                            AccOf<T>* channel_coefs, int64_t N, int64_t C, int64_t S,
                            int64_t G) {
  using Acc = AccOf<T>;
  const bool grads = dx || f.dr;  // an elementwise pass is needed
  const int64_t D = C / G, rows = rows_per_block(C), blocks = ceil_div(S, rows);
  const int threads = threads_for(N * C * S);
  if (N >= threads) {
#pragma omp parallel num_threads(threads)
    {
      SumScratch<Acc> scratch(C);
      // Not a std::vector<double>: GCC may clone its constructor (.constprop) in this TU, a
      // function outside gn::avx2 with AVX code in it (test_cpu_build).
      std::unique_ptr<double[]> sums(new double[3 * C]);
      std::vector<Acc> coef(kCoefRows * C);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        const int64_t offset = n * S * C;
        std::fill(sums.get(), sums.get() + 3 * C, 0.0);
        add_channel_sums<kAct, kRes>(dy + offset, x + offset, f.r_at(offset), mean + n * G,
                                     rstd + n * G, gamma, f, 0, S, C, G, scratch, sums.get());
        std::copy(sums.get(), sums.get() + C, ds + n * C);
        std::copy(sums.get() + C, sums.get() + 2 * C, db + n * C);
        std::copy(sums.get() + 2 * C, sums.get() + 3 * C, dev + n * C);
        for (int64_t g = 0; g < G; ++g) {
          group_input_grad_coefs(ds + n * C, db + n * C, dev + n * C, gamma, f, mean[n * G + g],
                                 rstd[n * G + g], g, D, S, C, grads ? coef.data() : nullptr);
        }
        if (grads) {
          input_grad_rows<kAct, kRes>(dy + offset, x + offset, f.r_at(offset),
                                      dx ? dx + offset : nullptr, f.dr_at(offset), S, C,
                                      coef.data());
        }
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
      add_channel_sums<kAct, kRes>(dy + n * S * C, x + n * S * C, f.r_at(n * S * C),
                                   mean + n * G, rstd + n * G, gamma, f, s0,
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
      group_input_grad_coefs(ds + n * C, db + n * C, dev + n * C, gamma, f, mean[t], rstd[t],
                             t % G, D, S, C, grads ? channel_coefs + n * kCoefRows * C : nullptr);
    }
    if (grads) {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N * blocks; ++i) {
        const int64_t n = i / blocks, s0 = (i % blocks) * rows, offset = (n * S + s0) * C;
        input_grad_rows<kAct, kRes>(dy + offset, x + offset, f.r_at(offset),
                                    dx ? dx + offset : nullptr, f.dr_at(offset),
                                    std::min(rows, S - s0), C,
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

namespace {

template <int kAct, bool kRes, typename T, typename P>
void backward_passes(const T* dy, const T* x, const P* gamma, FusedOperands<T, P> f,
                     const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta,
                     int64_t N, int64_t C, int64_t S, int64_t G, int channels_last,
                     void* workspace) {
  double* ds = static_cast<double*>(workspace);
  double* db = ds + N * C;
  double* dev = db + N * C;
  double* rest = dev + N * C;
  if (channels_last) {
    double* partials = rest;
    AccOf<T>* channel_coefs =
        reinterpret_cast<AccOf<T>*>(partials + channels_last_partials(N, C, S));
    backward_channels_last<kAct, kRes>(dy, x, gamma, f, mean, rstd, dx, ds, db, dev, partials,
                                       channel_coefs, N, C, S, G);
  } else {
    backward_channels_first<kAct, kRes>(dy, x, gamma, f, mean, rstd, dx, ds, db, dev,
                                        reinterpret_cast<GroupCoefficients*>(rest), N, C, S, G);
  }
  if (dgamma || dbeta) param_grads(ds, db, rstd, dgamma, dbeta, N, C, G);
}

template <int kAct, typename T, typename P>
void backward_act(const T* dy, const T* x, const P* gamma, FusedOperands<T, P> f,
                  const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta,
                  int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, void* ws) {
  if (f.r) {
    backward_passes<kAct, true>(dy, x, gamma, f, mean, rstd, dx, dgamma, dbeta, N, C, S, G,
                                channels_last, ws);
  } else {
    backward_passes<kAct, false>(dy, x, gamma, f, mean, rstd, dx, dgamma, dbeta, N, C, S, G,
                                 channels_last, ws);
  }
}

}  // namespace

template <typename T, typename P>
void backward(const T* dy, const T* x, const P* gamma, const P* beta, const T* residual,
              const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta,
              T* dresidual, int64_t N, int64_t C, int64_t S, int64_t G, int channels_last,
              int act, void* workspace) {
  // The plain op reads neither beta nor a residual: its passes get none, so z is never formed.
  const FusedOperands<T, P> f{act == GN_ACT_NONE ? nullptr : beta, residual,
                              residual ? dresidual : nullptr};
  if (act == GN_ACT_RELU) {
    backward_act<GN_ACT_RELU>(dy, x, gamma, f, mean, rstd, dx, dgamma, dbeta, N, C, S, G,
                              channels_last, workspace);
  } else if (act == GN_ACT_SILU) {
    backward_act<GN_ACT_SILU>(dy, x, gamma, f, mean, rstd, dx, dgamma, dbeta, N, C, S, G,
                              channels_last, workspace);
  } else {
    backward_act<GN_ACT_NONE>(dy, x, gamma, f, mean, rstd, dx, dgamma, dbeta, N, C, S, G,
                              channels_last, workspace);
  }
}

#define GN_INSTANTIATE_BACKWARD(T, P)                                                        \
  template void backward<T, P>(const T*, const T*, const P*, const P*, const T*,         \
                               const AccOf<T>*, const AccOf<T>*, T*, P*, P*, T*, int64_t,    \
                               int64_t, int64_t, int64_t, int, int, void*);
GN_INSTANTIATE_BACKWARD(float, float)
GN_INSTANTIATE_BACKWARD(double, double)
GN_INSTANTIATE_BACKWARD(Half, Half)
GN_INSTANTIATE_BACKWARD(Half, float)
#undef GN_INSTANTIATE_BACKWARD

}  // namespace GN_KERNEL_ISA
}  // namespace gn
