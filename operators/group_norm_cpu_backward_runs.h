// The CPU backward's per-group and per-run pieces (group_norm_cpu_backward.cc is their one
// user): group coefficients, the fused form's dz (grad_at), a run's sums and its dx pass.
#ifndef GN_MXNET_GROUP_NORM_CPU_BACKWARD_RUNS_H_
#define GN_MXNET_GROUP_NORM_CPU_BACKWARD_RUNS_H_

#include <omp.h>

#include <type_traits>

#include "cpu_common.h"
#include "group_norm_activation.h"

namespace gn {
namespace GN_KERNEL_ISA {
// dy is centred on its group mean m, as x is on its own. dx's leading terms rstd·gamma[c]·dy and
// rstd·mean_g(gamma·dy) cancel exactly in a one-element group (dx = 0) and nearly in many others;
// formed apart, one per element in Acc and one per group in double, their roundings differ and
// leave rstd·|gamma·dy|·ulp behind (6e-5 in float32 where dx is 0). Centred, dy - m is exact
// there and the rest, rstd·(gamma[c]·m - mean_g(gamma·dy)), is a per-channel constant taken
// relative to the group's first gamma g0:
//   rstd·((gamma[c] - g0)·m + g0·(m - mean_g(dy)) - Σ_d (gamma_d - g0)·db_d / M).
// With one channel per group each product in it has a factor that is exactly 0, however the
// compiler fuses multiplies into adds (GCC does, across statements, at -O3 with FMA).
// The x term B·(x - mean), B = -rstd³·mean_g(gamma·ds), is formed as x_slope·((x - mean)·rstd),
// x_slope = B / rstd: B itself leaves the range where |x| is huge (rstd 1e-30 in float32 makes
// B ~ 1e-60; 1e-300 in float64, 1e-600), while x_slope ~ rstd and (x - mean)·rstd ~ 1 do not.
struct GroupCoefficients {
  double x_slope;      // dx = A·(dy - dy_centre) + x_slope·((x - mean)·rstd) + channel_constant
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
  const double x_slope = -rstd * (rstd * gamma_ds) * inv_count;
  const double mean_dy = db_total * inv_count;
  const double centre = static_cast<double>(static_cast<Acc>(mean_dy));
  return {x_slope, centre, gamma_pivot, rstd * centre,
          rstd * (gamma_pivot * (centre - mean_dy) - db_spread * inv_count) -
              x_slope * (rstd * offset)};
}

// dz at i of a run whose z = centred·scale + shift (+ r[i] when kRes).
template <int kAct, bool kRes, typename T>
inline AccOf<T> grad_at(const T* dy, const T* r, int64_t i, AccOf<T> centred, AccOf<T> scale,
                        AccOf<T> shift) {
  using Acc = AccOf<T>;
  return gn_act::grad_through<kAct>(Element<T>::load(dy[i]), centred, scale, shift,
                                    kRes ? Element<T>::load(r[i]) : Acc(0));
}

template <int kAct, bool kRes, typename T>
inline void row_sums(const T* dy, const T* x, const T* r, int64_t length, AccOf<T> mean,
                     AccOf<T> scale, AccOf<T> shift, double* ds, double* db, double* dev) {
  using Acc = AccOf<T>;
  Acc sums[3];
  lane_reduce_many<Acc, 3>(length, [=](int64_t i, Acc* t) {
    const Acc centred = Element<T>::load(x[i]) - mean;
    const Acc g = grad_at<kAct, kRes>(dy, r, i, centred, scale, shift);
    t[0] = g * centred;
    t[1] = g;
    t[2] = centred;
  }, sums);
  *ds = static_cast<double>(sums[0]);
  *db = static_cast<double>(sums[1]);
  *dev = static_cast<double>(sums[2]);
}

// dx (and d residual, where dr is given) over one channel's run of a group with coefficients
// k, dy_coef = rstd·gamma[c], shift = beta[c]. dx may be null when dr is not.
// Calls pass(write_dx, write_dr) with the compile-time flags the outputs ask for: dx alone
// (the plain op, or no dresidual wanted), dx and dresidual, or dresidual alone.
template <bool kRes, typename T, typename Pass>
inline void with_write_flags(const T* dx, const T* dr, Pass&& pass) {
  if (!kRes || !dr) {
    pass(std::true_type{}, std::false_type{});
  } else if (dx) {
    pass(std::true_type{}, std::true_type{});
  } else {
    pass(std::false_type{}, std::true_type{});
  }
}

template <int kAct, bool kRes, typename T>
inline void input_grad_run(const T* dy, const T* x, const T* r, T* dx, T* dr, int64_t length,
                           AccOf<T> dy_coef, AccOf<T> mean, AccOf<T> rstd, AccOf<T> shift,
                           double gamma_c, const GroupCoefficients& k) {
  using Acc = AccOf<T>;
  const Acc dy_centre = static_cast<Acc>(k.dy_centre), x_slope = static_cast<Acc>(k.x_slope);
  const Acc constant = static_cast<Acc>(k.channel_constant(gamma_c));
  // Which of dx and d residual are written is fixed per loop, so each loop stays one simd loop.
  auto pass = [&](auto write_dx, auto write_dr) {
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) {
      const Acc centred = Element<T>::load(x[i]) - mean;
      const Acc g = grad_at<kAct, kRes>(dy, r, i, centred, dy_coef, shift);
      if constexpr (decltype(write_dr)::value) dr[i] = Element<T>::store(g);
      if constexpr (decltype(write_dx)::value) {
        dx[i] = Element<T>::store(dy_coef * (g - dy_centre) + x_slope * (centred * rstd) +
                                  constant);
      }
    }
  };
  with_write_flags<kRes>(dx, dr, pass);
}

// The fused form's extra operands; all null for the plain op (see backward()).
template <typename T, typename P>
struct FusedOperands {
  const P* beta;
  const T* r;  // residual
  T* dr;       // d residual
  const T* r_at(int64_t offset) const { return r ? r + offset : nullptr; }
  T* dr_at(int64_t offset) const { return dr ? dr + offset : nullptr; }
  AccOf<T> shift(int64_t c) const {
    return beta ? static_cast<AccOf<T>>(Element<P>::load(beta[c])) : AccOf<T>(0);
  }
};

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

}  // namespace GN_KERNEL_ISA
}  // namespace gn

#endif  // GN_MXNET_GROUP_NORM_CPU_BACKWARD_RUNS_H_
