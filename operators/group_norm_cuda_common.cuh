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

// The largest |value| of a set (the forward's overflow fallback, group_norm_cuda.cu).
template <typename Acc> struct MaxAbs {
  Acc v;
};

template <typename Acc>
__device__ __forceinline__ MaxAbs<Acc> combine(const MaxAbs<Acc>& a, const MaxAbs<Acc>& b) {
  return {fmax(a.v, b.v)};
}

template <typename Acc>
__device__ __forceinline__ MaxAbs<Acc> shfl_down(const MaxAbs<Acc>& v, int offset) {
  return {__shfl_down_sync(0xffffffffu, v.v, offset)};
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

// The launch shape of the channels-last reduction kernels (the forward's moments, the
// backward's gradient sums), which index threads by it: tx lanes of `pack` channels each by
// kThreads / tx rows; blocks over the channels, the split of the S rows, and the samples. pack
// is the widest vector when C and the pointers allow it.
struct ColumnsLaunch {
  int pack;
  dim3 block, grid;
};

inline ColumnsLaunch columns_launch(int64_t N, int64_t C, int64_t split, int max_pack,
                                    bool aligned) {
  const int pack = C % max_pack == 0 && aligned ? max_pack : 1;
  const int tx = pow2_at_least(ceil_div(C, pack), 32);
  return {pack, dim3(tx, kThreads / tx),
          dim3(static_cast<unsigned>(ceil_div(C, static_cast<int64_t>(tx) * pack)),
               static_cast<unsigned>(split), grid_yz(N))};
}

}  // namespace
}  // namespace gn_cuda

#endif  // GN_MXNET_GROUP_NORM_CUDA_COMMON_CUH_
