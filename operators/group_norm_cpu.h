// Typed CPU GroupNorm kernels; group_norm_cpu_entry.cc dispatches dtypes onto them.
#ifndef GN_MXNET_GROUP_NORM_CPU_H_
#define GN_MXNET_GROUP_NORM_CPU_H_

#include <cstddef>
#include <cstdint>

#include "cpu_common.h"

namespace gn {
namespace GN_KERNEL_ISA {

size_t forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last);
size_t backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last);

// residual may be null; act is a GN_ACT_* code.
template <typename T, typename P>
void forward(const T* x, const P* gamma, const P* beta, const T* residual, T* y,
             AccOf<T>* mean, AccOf<T>* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
             int channels_last, int act, double eps, void* workspace);

// The fused form's backward (act a GN_ACT_* code, residual and dresidual may be null): dz =
// dy·act'(GN(x) + residual) is formed inside the passes, dresidual = dz is written with dx.
template <typename T, typename P>
void backward(const T* dy, const T* x, const P* gamma, const P* beta, const T* residual,
              const AccOf<T>* mean, const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta,
              T* dresidual, int64_t N, int64_t C, int64_t S, int64_t G, int channels_last,
              int act, void* workspace);

}  // namespace GN_KERNEL_ISA
}  // namespace gn

#endif  // GN_MXNET_GROUP_NORM_CPU_H_
