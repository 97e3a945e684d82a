// Shared pieces of the GroupNorm CUDA kernels: dtype traits, packed loads, the reduction
// states (Welford moments, pairs of sums), deterministic warp/block reductions, and the
// launch plans. The plans depend only on the shape so that the *_workspace_bytes entries
// (which do not know the dtype) and the launchers agree on every size.
#ifndef GN_MXNET_GROUP_NORM_CUDA_COMMON_CUH_
#define GN_MXNET_GROUP_NORM_CUDA_COMMON_CUH_

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "group_norm_activation.h"
#include "group_norm_kernels.h"

namespace gn_cuda {

// Keeps "cudaErrorName: description" of `error` for gn_cuda_last_error() on this thread
// (group_norm_cuda.cu): a status code alone cannot say which CUDA error it was.
void record_cuda_error(cudaError_t error);

// Internal linkage: each .cu gets its own copy of the kernels and nothing but the gn_cuda_*
// entries leaves the shared library.
namespace {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T> struct FromAcc;
template <> struct FromAcc<float> {
  static __device__ __forceinline__ float cast(float v) { return v; }
};
template <> struct FromAcc<double> {
  static __device__ __forceinline__ double cast(double v) { return v; }
};
template <> struct FromAcc<__half> {
  static __device__ __forceinline__ __half cast(float v) { return __float2half_rn(v); }
};

// 16-byte packs when the contiguous extent and the pointers allow it, else scalars.
template <typename T> constexpr int max_vec() { return static_cast<int>(16 / sizeof(T)); }

template <typename T, int kVec> struct alignas(sizeof(T) * kVec) Pack { T v[kVec]; };

template <typename T, int kVec>
__device__ __forceinline__ Pack<T, kVec> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, kVec>*>(p);
}
template <typename T, int kVec>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, kVec>& pack) {
  *reinterpret_cast<Pack<T, kVec>*>(p) = pack;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// count/mean/m2 of a set of samples; merging two sets is Chan's parallel update.
template <typename Acc> struct Moments {
  Acc count;
  Acc mean;
  Acc m2;
};

template <typename Acc>
__device__ __forceinline__ Moments<Acc> combine(const Moments<Acc>& a, const Moments<Acc>& b) {
  const Acc n = a.count + b.count;
  if (n == Acc(0)) return a;
  const Acc delta = b.mean - a.mean;
  const Acc weight_b = b.count / n;
  Moments<Acc> r;
  r.count = n;
  r.mean = a.mean + delta * weight_b;
  r.m2 = a.m2 + b.m2 + delta * delta * a.count * weight_b;
  return r;
}

// K independent sums (backward: ds, db, dev per channel; dgamma, dbeta per parameter).
template <typename Acc, int K> struct Sums {
  Acc v[K];
};

template <typename Acc, int K>
__device__ __forceinline__ Sums<Acc, K> combine(const Sums<Acc, K>& a, const Sums<Acc, K>& b) {
  Sums<Acc, K> r;
#pragma unroll
  for (int k = 0; k < K; ++k) r.v[k] = a.v[k] + b.v[k];
  return r;
}

template <typename Acc>
__device__ __forceinline__ Moments<Acc> shfl_down(const Moments<Acc>& v, int offset) {
  Moments<Acc> r;
  r.count = __shfl_down_sync(0xffffffffu, v.count, offset);
  r.mean = __shfl_down_sync(0xffffffffu, v.mean, offset);
  r.m2 = __shfl_down_sync(0xffffffffu, v.m2, offset);
  return r;
}

template <typename Acc, int K>
__device__ __forceinline__ Sums<Acc, K> shfl_down(const Sums<Acc, K>& v, int offset) {
  Sums<Acc, K> r;
#pragma unroll
  for (int k = 0; k < K; ++k) r.v[k] = __shfl_down_sync(0xffffffffu, v.v[k], offset);
  return r;
}

// Folds the blockDim.y rows of per-thread values in shared memory (kVec each, row pitch
// blockDim.x * kVec) into row 0 with a fixed tree, so the result does not depend on timing; row 0
// then stores its kVec values at out[index + v] when `store`. Starts and ends with a barrier, so
// callers may refill `mine` right after.
template <int kVec, typename V>
__device__ __forceinline__ void fold_rows_and_store(V* mine, bool store, V* out, int64_t index) {
  const int ty = threadIdx.y, pitch = blockDim.x * kVec;
  __syncthreads();
  for (int stride = blockDim.y / 2; stride > 0; stride >>= 1) {
    if (ty < stride) {
#pragma unroll
      for (int v = 0; v < kVec; ++v) mine[v] = combine(mine[v], mine[v + stride * pitch]);
    }
    __syncthreads();
  }
  if (ty == 0 && store) {
#pragma unroll
    for (int v = 0; v < kVec; ++v) out[index + v] = mine[v];
  }
  __syncthreads();
}

// Fixed shuffle tree: the result (valid in lane 0) does not depend on timing.
template <typename V> __device__ __forceinline__ V warp_reduce(V v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = combine(v, shfl_down(v, offset));
  return v;
}

// blockDim.x must be a multiple of 32 (and blockDim.y == 1). Result valid in thread 0.
// `scratch` holds 32 values; callers that reuse it must __syncthreads() first.
template <typename V> __device__ __forceinline__ V block_reduce(V v, V* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = warp_reduce(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    V w = lane < num_warps ? scratch[lane] : V{};
    v = warp_reduce(w);
  }
  return v;
}

// ---- launch plans (host side, shape only) ----------------------------------------------

constexpr int64_t kTargetBlocks = 1024;      // ~8 resident 256-thread blocks on 132 SMs
constexpr int64_t kTargetRowWarps = 8192;    // same budget counted in warps
constexpr int64_t kMinChunkElements = 2048;  // below this a block's fixed cost dominates
constexpr int64_t kMinRowsPerChunk = 32;
constexpr int64_t kMinRowChunk = 1024;       // elements per warp in a channels-first row
constexpr int64_t kMaxSplit = 4096;          // also keeps gridDim.y legal
constexpr int64_t kNominalColumnsPerBlock = 128;
constexpr int kThreads = 256;
constexpr int64_t kMaxGridYZ = 65535;
constexpr size_t kSliceAlign = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline int64_t round_up(int64_t v, int64_t m) { return ceil_div(v, m) * m; }

// How many blocks share one reduction. Channels-first: each (n, g) group is one contiguous
// run of D*S elements cut into `split` chunks. Channels-last: the S rows of each sample are cut
// into `split` chunks and every chunk yields per-channel partials.
inline int64_t forward_split(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last) {
  if (N <= 0 || S <= 0) return 1;
  if (!channels_last) {
    const int64_t M = (C / G) * S;
    return clamp64(ceil_div(kTargetBlocks, N * G), 1,
                   clamp64(ceil_div(M, kMinChunkElements), 1, kMaxSplit));
  }
  const int64_t column_tiles = ceil_div(C, kNominalColumnsPerBlock);
  return clamp64(ceil_div(kTargetBlocks, N * column_tiles), 1,
                 clamp64(ceil_div(S, kMinRowsPerChunk), 1, kMaxSplit));
}

inline int64_t backward_split(int64_t N, int64_t C, int64_t S, int64_t G, int channels_last) {
  if (N <= 0 || S <= 0) return 1;
  if (!channels_last) {
    return clamp64(ceil_div(kTargetRowWarps, N * C), 1,
                   clamp64(ceil_div(S, kMinRowChunk), 1, kMaxSplit));
  }
  return forward_split(N, C, S, G, channels_last);
}

inline int64_t forward_partial_count(int64_t N, int64_t C, int64_t S, int64_t G, int cl) {
  const int64_t split = forward_split(N, C, S, G, cl);
  return cl ? N * split * C : N * G * split;
}

inline size_t slice_bytes(int64_t count, size_t elem) {
  return static_cast<size_t>(round_up(static_cast<int64_t>(count * elem), kSliceAlign));
}

// Hands out kSliceAlign-aligned slices of the caller's workspace in a fixed order. The base is
// rounded up first (the *_workspace_bytes entries include that slack), so packed loads of the
// slices are legal whatever alignment the caller's allocator gives.
class WorkspaceCarver {
 public:
  explicit WorkspaceCarver(void* base)
      : next_(reinterpret_cast<char*>(
            (reinterpret_cast<uintptr_t>(base) + kSliceAlign - 1) & ~uintptr_t(kSliceAlign - 1))) {}
  template <typename U> U* take(int64_t count) {
    U* p = reinterpret_cast<U*>(next_);
    next_ += slice_bytes(count, sizeof(U));
    return p;
  }

 private:
  char* next_;
};

inline int check_shape(int64_t N, int64_t C, int64_t S, int64_t G) {
  if (N < 0 || C <= 0 || S < 0 || G <= 0 || C % G != 0) return GN_STATUS_BAD_SHAPE;
  if (N > 0 && S > 0 && (C * S) / S != C) return GN_STATUS_BAD_SHAPE;
  return GN_STATUS_OK;
}

inline int check_dtypes(int dtype, int param_dtype) {
  if (dtype != GN_DTYPE_FLOAT32 && dtype != GN_DTYPE_FLOAT64 && dtype != GN_DTYPE_FLOAT16)
    return GN_STATUS_BAD_DTYPE;
  if (param_dtype == dtype) return GN_STATUS_OK;
  if (dtype == GN_DTYPE_FLOAT16 && param_dtype == GN_DTYPE_FLOAT32) return GN_STATUS_OK;
  return GN_STATUS_BAD_DTYPE;
}

inline int launch_status() {
  const cudaError_t error = cudaGetLastError();
  if (error == cudaSuccess) return GN_STATUS_OK;
  record_cuda_error(error);
  return GN_STATUS_DEVICE_ERROR;
}

// Smallest power of two >= v, capped at `cap` (a power of two).
inline int pow2_at_least(int64_t v, int cap) {
  int p = 1;
  while (p < cap && p < v) p <<= 1;
  return p;
}

inline unsigned grid_yz(int64_t n) { return static_cast<unsigned>(clamp64(n, 1, kMaxGridYZ)); }


// ---- the one elementwise pass shared by forward and backward ---------------------------
// Per-(n, c) coefficients. Centring on a value near the data before scaling keeps the result
// accurate when |mean| >> std (a*x + (beta - mean*a) would cancel two large terms); x - centre
// is then exact, and what separates centre from the exact mean is folded into the shift.
//   forward:  y  = act(scale*(x - centre) + shift [+ residual])
//             centre = pivot, shift = beta - (mean - pivot)*scale
//   backward: dx = scale*(dz - dy_centre) + x_scale*(x - centre) + shift
//             centre = mean, dy_centre = the group mean of dz, x_scale = B, shift = K,
//             dz = dy*act'(z), z = scale*(x - centre) + act_shift [+ residual] (scale is
//             gamma*rstd, act_shift beta: the forward's z, recomputed; dz = dy unfused)
template <typename Acc> struct ChannelCoefficients {
  const Acc* scale;
  const Acc* x_scale;  // backward only
  const Acc* centre;
  const Acc* dy_centre;  // backward only
  const Acc* shift;
  const Acc* act_shift = nullptr;  // fused backward only
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
        Pack<Acc, kVec> x_scale, dy_centre, act_shift;
        if (kBackward) {
          x_scale = channel_pack<Acc, kVec, kChannelsLast>(coef.x_scale, row + c);
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
            r = scale.v[v] * (g - dy_centre.v[v]) + x_scale.v[v] * centred + shift.v[v];
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

#endif  // GN_MXNET_GROUP_NORM_CUDA_COMMON_CUH_
