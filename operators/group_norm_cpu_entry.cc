// dtype dispatch onto the typed CPU kernels, compiled once per instruction set like them.
#include <algorithm>
#include <type_traits>

#include "group_norm_cpu.h"
#include "group_norm_cpu_entries.h"
#include "group_norm_kernels.h"

namespace gn {
namespace GN_KERNEL_ISA {
namespace {

// Calls fn with null pointers of the (data, param) types, or returns GN_STATUS_BAD_DTYPE.
template <typename Fn>
int dispatch(int dtype, int param_dtype, Fn&& fn) {
  if (dtype == GN_DTYPE_FLOAT32 && param_dtype == GN_DTYPE_FLOAT32) return fn(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  if (dtype == GN_DTYPE_FLOAT64 && param_dtype == GN_DTYPE_FLOAT64) return fn(static_cast<double*>(nullptr), static_cast<double*>(nullptr));
  if (dtype == GN_DTYPE_FLOAT16 && param_dtype == GN_DTYPE_FLOAT16) return fn(static_cast<Half*>(nullptr), static_cast<Half*>(nullptr));
  if (dtype == GN_DTYPE_FLOAT16 && param_dtype == GN_DTYPE_FLOAT32) return fn(static_cast<Half*>(nullptr), static_cast<float*>(nullptr));
  return GN_STATUS_BAD_DTYPE;
}

}  // namespace

int forward_entry(int dtype, int param_dtype, const void* x, const void* gamma,
                  const void* beta, const void* residual, void* y, void* mean, void* rstd,
                  int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int act,
                  double eps, void* workspace) {
  return dispatch(dtype, param_dtype, [&](auto* t_tag, auto* p_tag) {
    using T = std::remove_pointer_t<decltype(t_tag)>;
    using P = std::remove_pointer_t<decltype(p_tag)>;
    using A = AccOf<T>;
    if (N == 0 || S == 0) return static_cast<int>(GN_STATUS_OK);  // empty: nothing to write
    forward<T, P>(static_cast<const T*>(x), static_cast<const P*>(gamma),
                  static_cast<const P*>(beta), static_cast<const T*>(residual),
                  static_cast<T*>(y), static_cast<A*>(mean), static_cast<A*>(rstd), N, C, S,
                  G, channels_last, act, eps, workspace);
    return static_cast<int>(GN_STATUS_OK);
  });
}

int backward_entry(int dtype, int param_dtype, const void* dy, const void* x,
                   const void* gamma, const void* beta, const void* residual,
                   const void* mean, const void* rstd, void* dx, void* dgamma, void* dbeta,
                   void* dresidual, int64_t N, int64_t C, int64_t S, int64_t G,
                   int channels_last, int act, void* workspace) {
  return dispatch(dtype, param_dtype, [&](auto* t_tag, auto* p_tag) {
    using T = std::remove_pointer_t<decltype(t_tag)>;
    using P = std::remove_pointer_t<decltype(p_tag)>;
    using A = AccOf<T>;
    if (N == 0 || S == 0) {  // empty input: gradients of gamma/beta are zero
      for (int64_t c = 0; c < C; ++c) {
        if (dgamma) static_cast<P*>(dgamma)[c] = Element<P>::store(0);
        if (dbeta) static_cast<P*>(dbeta)[c] = Element<P>::store(0);
      }
      return static_cast<int>(GN_STATUS_OK);
    }
    backward<T, P>(static_cast<const T*>(dy), static_cast<const T*>(x),
                   static_cast<const P*>(gamma), static_cast<const P*>(beta),
                   static_cast<const T*>(residual), static_cast<const A*>(mean),
                   static_cast<const A*>(rstd), static_cast<T*>(dx), static_cast<P*>(dgamma),
                   static_cast<P*>(dbeta), static_cast<T*>(dresidual), N, C, S, G,
                   channels_last, act, workspace);
    return static_cast<int>(GN_STATUS_OK);
  });
}

}  // namespace GN_KERNEL_ISA
}  // namespace gn
