// Weight Standardization CPU kernels (weight_standardization_kernels.h gives the math), compiled
// once per instruction set like the GroupNorm kernels (gn_mxnet/operator/build.py's
// CPU_KERNEL_SOURCES). Rows (output channels) are independent: threads split them, each row's
// sums run in double over kLanes independent accumulators (cpu_common.h), so they vectorize.
#include <cmath>
#include <type_traits>

#include "cpu_common.h"
#include "weight_standardization_cpu.h"
#include "weight_standardization_kernels.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

template <typename T>
inline double load(const T* x, int64_t i) {
  return static_cast<double>(Element<T>::load(x[i]));
}

template <typename T>
inline T store(double v) {
  return Element<T>::store(static_cast<AccOf<T>>(v));
}

// A row's first-pass mean and the correction its deviations give: the second pass sums
// d = w - mean0 (exact for near-constant rows), so mean = mean0 + sum(d) / K and
// M2 = sum(d^2) - sum(d)^2 / K hold to double rounding whatever the row's offset.
struct RowMoments {
  double mean0, correction, m2;
};

inline RowMoments finish(double mean0, double sum_d, double sum_d2, int64_t K) {
  const double correction = sum_d / static_cast<double>(K);
  const double m2 = sum_d2 - sum_d * correction;
  return {mean0, correction, m2 < 0.0 ? 0.0 : m2};  // NaN stays NaN
}

template <typename T>
inline double row_mean0(const T* w, int64_t K) {
  return lane_reduce<double>(K, [w](int64_t i) { return load(w, i); }) / static_cast<double>(K);
}

// qiao's unbiased std; K = 1 has none, and is given 0 (w_hat = 0, gradient 0).
inline double qiao_std(double m2, int64_t K) {
  return K > 1 ? std::sqrt(m2 / static_cast<double>(K - 1)) : 0.0;
}

// The multiplier of c in w_hat = c * inv.
inline double inverse_scale(double m2, int64_t K, int convention, double eps) {
  if (convention == WS_CONVENTION_TIMM) return 1.0 / std::sqrt(m2 / static_cast<double>(K) + eps);
  return 1.0 / (qiao_std(m2, K) + eps);
}

template <typename Fn>
void for_rows(int64_t O, int64_t K, Fn&& fn) {
  const int threads = threads_for(O * K);
  if (threads <= 1) {
    for (int64_t o = 0; o < O; ++o) fn(o);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t o = 0; o < O; ++o) fn(o);
}

template <typename T>
void forward(const T* w, T* w_hat, int64_t O, int64_t K, int convention, double eps) {
  for_rows(O, K, [=](int64_t o) {
    const T* x = w + o * K;
    T* y = w_hat + o * K;
    const double mean0 = row_mean0(x, K);
    double sums[2];  // d, d^2
    lane_reduce_many<double, 2>(K, [x, mean0](int64_t i, double* t) {
      const double d = load(x, i) - mean0;
      t[0] = d;
      t[1] = d * d;
    }, sums);
    const RowMoments m = finish(mean0, sums[0], sums[1], K);
    const double inv = inverse_scale(m.m2, K, convention, eps);
    const double shift = m.mean0 + m.correction;
    for (int64_t i = 0; i < K; ++i) y[i] = store<T>((load(x, i) - shift) * inv);
  });
}

// timm (w_hat = c r, r = (M2/K + eps)^-1/2), as batch norm's backward:
//   dw = r (dy - mean(dy)) - c r^3 sum(dy c) / K
// qiao (w_hat = c / s, s = std + eps, std = sqrt(M2 / (K-1)), d std / d w_i = c_i / ((K-1) std)):
//   dw = (dy - mean(dy)) / s - c sum(dy c) / (s^2 (K-1) std),   the last term 0 where std = 0.
template <typename T>
void backward(const T* dy, const T* w, T* dw, int64_t O, int64_t K, int convention,
              double eps) {
  for_rows(O, K, [=](int64_t o) {
    const T* x = w + o * K;
    const T* g = dy + o * K;
    T* out = dw + o * K;
    const double mean0 = row_mean0(x, K);
    double sums[4];  // d, d^2, dy, dy d
    lane_reduce_many<double, 4>(K, [x, g, mean0](int64_t i, double* t) {
      const double d = load(x, i) - mean0;
      const double gi = load(g, i);
      t[0] = d;
      t[1] = d * d;
      t[2] = gi;
      t[3] = gi * d;
    }, sums);
    const RowMoments m = finish(mean0, sums[0], sums[1], K);
    const double kd = static_cast<double>(K);
    const double mean_dy = sums[2] / kd;
    const double sum_dy_c = sums[3] - m.correction * sums[2];  // sum dy (d - correction)
    double a, b;  // dw = a (dy - mean(dy)) - b c
    if (convention == WS_CONVENTION_TIMM) {
      a = 1.0 / std::sqrt(m.m2 / kd + eps);
      b = a * a * a * sum_dy_c / kd;
    } else {
      const double std_u = qiao_std(m.m2, K);
      const double s = std_u + eps;
      a = 1.0 / s;
      b = std_u > 0.0 ? sum_dy_c / (s * s * static_cast<double>(K - 1) * std_u) : 0.0;
    }
    const double shift = m.mean0 + m.correction;
    for (int64_t i = 0; i < K; ++i) {
      out[i] = store<T>(a * (load(g, i) - mean_dy) - b * (load(x, i) - shift));
    }
  });
}

// Calls fn with a null pointer of the element type, or returns GN_STATUS_BAD_DTYPE.
template <typename Fn>
int dispatch(int dtype, Fn&& fn) {
  if (dtype == GN_DTYPE_FLOAT32) return fn(static_cast<float*>(nullptr));
  if (dtype == GN_DTYPE_FLOAT64) return fn(static_cast<double*>(nullptr));
  if (dtype == GN_DTYPE_FLOAT16) return fn(static_cast<Half*>(nullptr));
  return GN_STATUS_BAD_DTYPE;
}

}  // namespace

int ws_forward_entry(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                     int convention, double eps) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    forward<T>(static_cast<const T*>(w), static_cast<T*>(w_hat), O, K, convention, eps);
    return static_cast<int>(GN_STATUS_OK);
  });
}

int ws_backward_entry(int dtype, const void* dy, const void* w, void* dw, int64_t O, int64_t K,
                      int convention, double eps) {
  return dispatch(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    backward<T>(static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dw), O, K,
                convention, eps);
    return static_cast<int>(GN_STATUS_OK);
  });
}

}  // namespace GN_KERNEL_ISA
}  // namespace gn
