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

// dz = dy * act'(GN(x) + residual) for act != GN_ACT_NONE; dz may be dy's or x's buffer
// elementwise (each element is read before it is written). residual may be null.
template <typename T, typename P>
void activation_grad(const T* dy, const T* x, const P* gamma, const P* beta, const T* residual,
                     const AccOf<T>* mean, const AccOf<T>* rstd, T* dz, int64_t N, int64_t C,
                     int64_t S, int64_t G, int channels_last, int act);

template <typename T, typename P>
void backward(const T* dy, const T* x, const P* gamma, const AccOf<T>* mean,
              const AccOf<T>* rstd, T* dx, P* dgamma, P* dbeta, int64_t N, int64_t C,
              int64_t S, int64_t G, int channels_last, void* workspace);

}  // namespace GN_KERNEL_ISA
}  // namespace gn

#endif  // GN_MXNET_GROUP_NORM_CPU_H_
