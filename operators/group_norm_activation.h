// The fused form's activations and their slopes, one definition for the CPU and the CUDA
// kernels (and the host emulation of the latter): y = act(z), z = GN(x) + residual.
#ifndef GN_MXNET_GROUP_NORM_ACTIVATION_H_
#define GN_MXNET_GROUP_NORM_ACTIVATION_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

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

// The fused backward's gradient of GN's output, dz = g·act'(z), z = centred·scale + shift + r
// (r = 0 without a residual: adding 0 changes no z's slope), recomputed per element from the
// forward's mean and rstd in each backward pass that reads dy, so no dz pass or buffer exists.
// relu's slope 1 or 0 as the bits of 1.0 masked by the comparison. GCC (without
// -fno-trapping-math) turns `g * (z > 0 ? 1 : 0)` into a branch around a multiply, which no
// simd loop takes: the CPU backward then ran scalar, on a mispredicted branch per element
// (8x the plain backward). g * 0 keeps a NaN or inf g visible as NaN, as MXNet's relu does.
template <typename Acc>
GN_HOST_DEVICE Acc relu_slope(Acc z) {
#if defined(__CUDA_ARCH__)
  return z > Acc(0) ? Acc(1) : Acc(0);  // the GPU predicates it
#else
  using Bits = std::conditional_t<sizeof(Acc) == 8, uint64_t, uint32_t>;
  const Acc one = Acc(1);
  Bits bits;
  std::memcpy(&bits, &one, sizeof bits);
  bits &= Bits(0) - static_cast<Bits>(z > Acc(0));
  Acc s;
  std::memcpy(&s, &bits, sizeof s);
  return s;
#endif
}

template <int kAct, typename Acc>
GN_HOST_DEVICE Acc grad_through(Acc g, Acc centred, Acc scale, Acc shift, Acc r) {
  if (kAct == GN_ACT_NONE) return g;
  const Acc z = centred * scale + shift + r;
  if (kAct == GN_ACT_RELU) return g * relu_slope(z);
  return g * slope<kAct>(z);
}

}  // namespace gn_act

#undef GN_HOST_DEVICE
#endif  // GN_MXNET_GROUP_NORM_ACTIVATION_H_
