// The fused form's activations and their slopes, one definition for the CPU and the CUDA
// kernels (and the host emulation of the latter): y = act(z), z = GN(x) + residual.
#ifndef GN_MXNET_GROUP_NORM_ACTIVATION_H_
#define GN_MXNET_GROUP_NORM_ACTIVATION_H_

#include <cmath>

#include "group_norm_kernels.h"

#if defined(__CUDACC__)
#define GN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GN_HOST_DEVICE inline
#endif

namespace gn_act {

inline bool valid(int act) { return act == GN_ACT_NONE || act == GN_ACT_RELU || act == GN_ACT_SILU; }

// relu keeps a NaN (z < 0 is false for it): a NaN in the network must stay visible, which
// MKLDNN's own ReLU does not do (docs/design.md §9).
template <int kAct, typename Acc>
GN_HOST_DEVICE Acc apply(Acc z) {
  if (kAct == GN_ACT_RELU) return z < Acc(0) ? Acc(0) : z;
  if (kAct == GN_ACT_SILU) return z / (Acc(1) + std::exp(-z));
  return z;
}

// d act / dz at z. relu's slope at 0 is taken as 0, like MXNet's relu. For silu with z far
// below 0, exp(-z) overflows to inf and s to 0: the slope is then 0, not NaN.
template <int kAct, typename Acc>
GN_HOST_DEVICE Acc slope(Acc z) {
  if (kAct == GN_ACT_RELU) return z > Acc(0) ? Acc(1) : Acc(0);
  if (kAct == GN_ACT_SILU) {
    const Acc s = Acc(1) / (Acc(1) + std::exp(-z));
    return s * (Acc(1) + z * (Acc(1) - s));
  }
  return Acc(1);
}

}  // namespace gn_act

#undef GN_HOST_DEVICE
#endif  // GN_MXNET_GROUP_NORM_ACTIVATION_H_
