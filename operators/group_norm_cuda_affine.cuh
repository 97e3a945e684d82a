// The one elementwise pass of the GroupNorm CUDA kernels, shared by forward and backward:
// y (or dx, and d residual) from per-(n, c) coefficients.
#ifndef GN_MXNET_GROUP_NORM_CUDA_AFFINE_CUH_
#define GN_MXNET_GROUP_NORM_CUDA_AFFINE_CUH_

#include "group_norm_cuda_common.cuh"

namespace gn_cuda {
namespace {

// ---- the one elementwise pass shared by forward and backward ---------------------------
// Per-(n, c) coefficients. Centring on a value near the data before scaling keeps the result
// accurate when |mean| >> std (a*x + (beta - mean*a) would cancel two large terms); x - centre
// is then exact, and what separates centre from the exact mean is folded into the shift.
//   forward:  y  = act(scale*(x - centre) + shift [+ residual])
//             centre = pivot, shift = beta - (mean - pivot)*scale
//   backward: dx = scale*(dz - dy_centre) + x_scale*((x - centre)*x_rstd) + shift
//             centre = mean, dy_centre = the group mean of dz, x_scale = B/rstd,
//             x_rstd = rstd (B alone underflows at huge |x|), shift = K,
//             dz = dy*act'(z), z = scale*(x - centre) + act_shift [+ residual] (scale is
//             gamma*rstd, act_shift beta: the forward's z, recomputed; dz = dy unfused)
template <typename Acc> struct ChannelCoefficients {
  const Acc* scale;
  const Acc* x_scale;  // backward only
  const Acc* centre;
  const Acc* dy_centre;  // backward only
  const Acc* shift;
  const Acc* act_shift = nullptr;  // fused backward only
  const Acc* x_rstd = nullptr;     // backward only
};

// With kVec > 1 the contiguous extent (S, or C when channels-last) is a multiple of kVec, so a
// pack never straddles two channels (channels-first) or two samples (channels-last).
constexpr int kApplyUnroll = 4;

template <typename Acc, int kVec, bool kChannelsLast>
__device__ __forceinline__ Pack<Acc, kVec> channel_pack(const Acc* __restrict__ coef, int64_t c) {
  Pack<Acc, kVec> p;
  if (kChannelsLast) {
    // kVec channels: one aligned pack (n*C + c is a multiple of kVec, slices are 256-aligned).
    p = load_pack<Acc, kVec>(coef + c);
  } else {
    const Acc v = coef[c];
#pragma unroll
    for (int i = 0; i < kVec; ++i) p.v[i] = v;
  }
  return p;
}

// in_a = x (forward) or dy (backward); in_b = x in backward, the residual or null in forward;
// in_c = the residual or null in backward (read only with an activation). kAct is the fused
// GN_ACT_* activation: the forward applies it, the backward takes dz = dy*act'(z) for dy.
// out2 (backward, may be null) gets dz: d residual. out may be null when out2 is not (only
// d residual asked for). in_a and out are not __restrict__: every element is read (all loads
// come first) by the thread that then writes it, so one buffer for both is safe.
template <typename T, int kVec, bool kChannelsLast, bool kBackward, int kAct>
__global__ void __launch_bounds__(kThreads) per_channel_affine_kernel(
    const T* in_a, const T* __restrict__ in_b, const T* __restrict__ in_c,
    ChannelCoefficients<typename AccOf<T>::type> coef, T* out, T* out2, int64_t N, int64_t C,
    int64_t S) {
  using Acc = typename AccOf<T>::type;
  const int64_t per_sample = C * S;
  const int64_t packs = per_sample / kVec;
  const bool index32 = per_sample <= INT32_MAX;  // 32-bit division is much cheaper
  for (int64_t n = blockIdx.y; n < N; n += gridDim.y) {
    const int64_t sample = n * per_sample;
    const int64_t row = n * C;
    for (int64_t tile = blockIdx.x; tile * kThreads * kApplyUnroll < packs; tile += gridDim.x) {
      Pack<T, kVec> pa[kApplyUnroll];
      Pack<T, kVec> pb[kApplyUnroll];
      Pack<T, kVec> pc[kApplyUnroll];
      const bool residual = kBackward && kAct != GN_ACT_NONE && in_c;
#pragma unroll
      for (int u = 0; u < kApplyUnroll; ++u) {  // all loads first: several in flight per thread
        const int64_t pk = (tile * kApplyUnroll + u) * kThreads + threadIdx.x;
        if (pk < packs) {
          pa[u] = load_pack<T, kVec>(in_a + sample + pk * kVec);
          if (in_b) pb[u] = load_pack<T, kVec>(in_b + sample + pk * kVec);
          if (residual) pc[u] = load_pack<T, kVec>(in_c + sample + pk * kVec);
        }
      }
#pragma unroll
      for (int u = 0; u < kApplyUnroll; ++u) {
        const int64_t pk = (tile * kApplyUnroll + u) * kThreads + threadIdx.x;
        if (pk >= packs) continue;
        const int64_t i = pk * kVec;
        int64_t c;
        if (kChannelsLast) {
          c = index32 ? static_cast<int64_t>(static_cast<uint32_t>(i) % static_cast<uint32_t>(C))
                      : i % C;
        } else {
          c = index32 ? static_cast<int64_t>(static_cast<uint32_t>(i) / static_cast<uint32_t>(S))
                      : i / S;
        }
        const Pack<Acc, kVec> scale = channel_pack<Acc, kVec, kChannelsLast>(coef.scale, row + c);
        const Pack<Acc, kVec> centre = channel_pack<Acc, kVec, kChannelsLast>(coef.centre, row + c);
        const Pack<Acc, kVec> shift = channel_pack<Acc, kVec, kChannelsLast>(coef.shift, row + c);
        Pack<Acc, kVec> x_scale, x_rstd, dy_centre, act_shift;
        if (kBackward) {
          x_scale = channel_pack<Acc, kVec, kChannelsLast>(coef.x_scale, row + c);
          x_rstd = channel_pack<Acc, kVec, kChannelsLast>(coef.x_rstd, row + c);
          dy_centre = channel_pack<Acc, kVec, kChannelsLast>(coef.dy_centre, row + c);
          if (kAct != GN_ACT_NONE)
            act_shift = channel_pack<Acc, kVec, kChannelsLast>(coef.act_shift, row + c);
        }
        Pack<T, kVec> o, dz;
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          Acc r;
          if (kBackward) {
            const Acc centred = to_acc(pb[u].v[v]) - centre.v[v];
            Acc g = to_acc(pa[u].v[v]);
            if (kAct != GN_ACT_NONE)
              g = gn_act::grad_through<kAct>(g, centred, scale.v[v], act_shift.v[v],
                                             residual ? to_acc(pc[u].v[v]) : Acc(0));
            dz.v[v] = FromAcc<T>::cast(g);
            r = scale.v[v] * (g - dy_centre.v[v]) + x_scale.v[v] * (centred * x_rstd.v[v]) +
                shift.v[v];
          } else {
            r = scale.v[v] * (to_acc(pa[u].v[v]) - centre.v[v]) + shift.v[v];
            if (in_b) r += to_acc(pb[u].v[v]);
            r = gn_act::apply<kAct>(r);
          }
          o.v[v] = FromAcc<T>::cast(r);
        }
        if (!kBackward || out) store_pack<T, kVec>(out + sample + i, o);
        if (kBackward && out2) store_pack<T, kVec>(out2 + sample + i, dz);
      }
    }
  }
}

// Returns GN_STATUS_*; a no-op when there is nothing to write. `act` (GN_ACT_*) is the fused
// activation, applied forward and differentiated backward (coef.x_scale given); in_c and out2
// are the backward's residual and d residual (null in the forward).
template <typename T>
int launch_per_channel_affine(const T* in_a, const T* in_b, const T* in_c,
                              const ChannelCoefficients<typename AccOf<T>::type>& coef, T* out,
                              T* out2, int64_t N, int64_t C, int64_t S, int channels_last,
                              int act, cudaStream_t stream) {
  if (N == 0 || S == 0) return GN_STATUS_OK;
  constexpr int kMax = max_vec<T>();
  const int64_t contiguous = channels_last ? C : S;
  const bool vec = contiguous % kMax == 0 && aligned16(in_a) && aligned16(out) &&
                   aligned16(in_b) && aligned16(in_c) && aligned16(out2);
  const int64_t packs = C * S / (vec ? kMax : 1);
  const dim3 grid(static_cast<unsigned>(clamp64(ceil_div(packs, kThreads * kApplyUnroll), 1,
                                                INT32_MAX)),
                  grid_yz(N));
#define GN_AFFINE_ACT(VEC, CL, BACKWARD)                                                       \
  do {                                                                                         \
    if (act == GN_ACT_RELU)                                                                    \
      per_channel_affine_kernel<T, VEC, CL, BACKWARD, GN_ACT_RELU>                             \
          <<<grid, kThreads, 0, stream>>>(in_a, in_b, in_c, coef, out, out2, N, C, S);         \
    else if (act == GN_ACT_SILU)                                                               \
      per_channel_affine_kernel<T, VEC, CL, BACKWARD, GN_ACT_SILU>                             \
          <<<grid, kThreads, 0, stream>>>(in_a, in_b, in_c, coef, out, out2, N, C, S);         \
    else                                                                                       \
      per_channel_affine_kernel<T, VEC, CL, BACKWARD, GN_ACT_NONE>                             \
          <<<grid, kThreads, 0, stream>>>(in_a, in_b, in_c, coef, out, out2, N, C, S);         \
  } while (0)
#define GN_AFFINE(VEC, CL)                                                                     \
  do {                                                                                         \
    if (coef.x_scale) GN_AFFINE_ACT(VEC, CL, true); else GN_AFFINE_ACT(VEC, CL, false);        \
  } while (0)
  if (vec) {
    if (channels_last) GN_AFFINE(kMax, true); else GN_AFFINE(kMax, false);
  } else {
    if (channels_last) GN_AFFINE(1, true); else GN_AFFINE(1, false);
  }
#undef GN_AFFINE
#undef GN_AFFINE_ACT
  return launch_status();
}

}  // namespace
}  // namespace gn_cuda

#endif  // GN_MXNET_GROUP_NORM_CUDA_AFFINE_CUH_
