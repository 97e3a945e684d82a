// The fused form's backward prologue: dz = dy * act'(z), z = GN(x) + residual recomputed from
// x, mean, rstd, gamma, beta (the forward keeps no pre-activation: it would cost a tensor of
// memory per layer). dz is d residual, and the plain backward then runs on it.
#include <omp.h>

#include <vector>

#include "cpu_common.h"
#include "group_norm_activation.h"
#include "group_norm_cpu.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

// dz over one run, z = (x - m[k])*a[k] + b[k] + r with k = 0 along a channel's run (kRow
// false) or k = i along a channels-last row. mean is the forward's rounded mean, not its exact
// split: z differs from the forward's by an Acc rounding, which moves relu's kink only for z
// within that rounding of 0.
template <int kAct, bool kRow, typename T>
inline void slope_run(const T* dy, const T* x, const T* r, T* dz, int64_t length,
                      const AccOf<T>* m, const AccOf<T>* a, const AccOf<T>* b) {
  using Acc = AccOf<T>;
  if (r) {
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) {
      const int64_t k = kRow ? i : 0;
      const Acc z = (Element<T>::load(x[i]) - m[k]) * a[k] + b[k] + Element<T>::load(r[i]);
      dz[i] = Element<T>::store(Element<T>::load(dy[i]) * gn_act::slope<kAct>(z));
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) {
    const int64_t k = kRow ? i : 0;
    const Acc z = (Element<T>::load(x[i]) - m[k]) * a[k] + b[k];
    dz[i] = Element<T>::store(Element<T>::load(dy[i]) * gn_act::slope<kAct>(z));
  }
}

template <int kAct, typename T, typename P>
void slopes(const T* dy, const T* x, const P* gamma, const P* beta, const T* r,
            const AccOf<T>* mean, const AccOf<T>* rstd, T* dz, int64_t N, int64_t C,
            int64_t S, int64_t G, int channels_last) {
  using Acc = AccOf<T>;
  const int64_t D = C / G;
  const int threads = threads_for(N * C * S);
  if (!channels_last) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t row = 0; row < N * C; ++row) {
      const int64_t c = row % C, t = row / D;
      const Acc m = mean[t], a = static_cast<Acc>(Element<P>::load(gamma[c])) * rstd[t];
      const Acc b = static_cast<Acc>(Element<P>::load(beta[c]));
      slope_run<kAct, false>(dy + row * S, x + row * S, r ? r + row * S : nullptr,
                             dz + row * S, S, &m, &a, &b);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    std::vector<Acc> coef(3 * C);  // per channel of the current sample: mean, scale, beta
    int64_t coef_n = -1;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < N * S; ++row) {
      const int64_t n = row / S;
      if (n != coef_n) {
        for (int64_t c = 0; c < C; ++c) {
          coef[c] = mean[n * G + c / D];
          coef[C + c] = static_cast<Acc>(Element<P>::load(gamma[c])) * rstd[n * G + c / D];
          coef[2 * C + c] = static_cast<Acc>(Element<P>::load(beta[c]));
        }
        coef_n = n;
      }
      const int64_t k = row * C;
      slope_run<kAct, true>(dy + k, x + k, r ? r + k : nullptr, dz + k, C, coef.data(),
                            coef.data() + C, coef.data() + 2 * C);
    }
  }
}

}  // namespace

template <typename T, typename P>
void activation_grad(const T* dy, const T* x, const P* gamma, const P* beta, const T* residual,
                     const AccOf<T>* mean, const AccOf<T>* rstd, T* dz, int64_t N, int64_t C,
                     int64_t S, int64_t G, int channels_last, int act) {
  if (act == GN_ACT_RELU) {
    slopes<GN_ACT_RELU>(dy, x, gamma, beta, residual, mean, rstd, dz, N, C, S, G, channels_last);
  } else if (act == GN_ACT_SILU) {
    slopes<GN_ACT_SILU>(dy, x, gamma, beta, residual, mean, rstd, dz, N, C, S, G, channels_last);
  }
}

#define GN_INSTANTIATE_ACTIVATION_GRAD(T, P)                                                 \
  template void activation_grad<T, P>(const T*, const T*, const P*, const P*, const T*,     \
                                      const AccOf<T>*, const AccOf<T>*, T*, int64_t,         \
                                      int64_t, int64_t, int64_t, int, int);
GN_INSTANTIATE_ACTIVATION_GRAD(float, float)
GN_INSTANTIATE_ACTIVATION_GRAD(double, double)
GN_INSTANTIATE_ACTIVATION_GRAD(Half, Half)
GN_INSTANTIATE_ACTIVATION_GRAD(Half, float)
#undef GN_INSTANTIATE_ACTIVATION_GRAD

}  // namespace GN_KERNEL_ISA
}  // namespace gn
