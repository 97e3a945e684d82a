// Weight Standardization CUDA kernels (weight_standardization_kernels.h gives the math): one
// block per output channel, each thread summing a strided share of the row in double, combined
// by group_norm_cuda_common.cuh's fixed-order block reduction (deterministic, no atomics). The
// same passes as the CPU kernels (weight_standardization_cpu.cc): the mean, the deviations'
// sum and squares around it (with dy's sums in the backward), then the elementwise write.
// Checked on the CPU through tests/cuda_host_emulation.h; never run on a GPU (docs/gpu.md).
#include <cmath>

#include "group_norm_cuda_common.cuh"
#include "weight_standardization_kernels.h"

namespace gn_cuda {
namespace {

constexpr int kWsThreads = 256;

template <typename T>
__device__ __forceinline__ double load_double(const T* p, int64_t i) {
  return static_cast<double>(to_acc(p[i]));
}

template <typename T>
__device__ __forceinline__ T store_double(double v) {
  return FromAcc<T>::cast(static_cast<typename AccOf<T>::type>(v));
}

// qiao's unbiased std, 0 for K = 1; w_hat = (w - mean) * inv.
__device__ __forceinline__ double qiao_std(double m2, int64_t K) {
  return K > 1 ? sqrt(m2 / static_cast<double>(K - 1)) : 0.0;
}

// The row's mean and sum of squared deviations, from the sums of d = w - mean0 and d^2 (thread
// 0's block_reduce result): the mean re-centred by d's sum, m2 clamped at 0 (NaN stays NaN).
struct RowMoments {
  double correction, shift, m2;
};

__device__ __forceinline__ RowMoments row_moments(double mean0, double sum_d,
                                                  double sum_d2, int64_t K) {
  RowMoments m;
  m.correction = sum_d / static_cast<double>(K);
  const double m2_raw = sum_d2 - sum_d * m.correction;
  m.m2 = m2_raw < 0.0 ? 0.0 : m2_raw;
  m.shift = mean0 + m.correction;
  return m;
}

// The row's first-pass mean, in every thread.
template <typename T>
__device__ double row_mean0(const T* x, int64_t K) {
  __shared__ Sums<double, 1> scratch[32];
  __shared__ double mean0;
  Sums<double, 1> s{};
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) s.v[0] += load_double(x, i);
  s = block_reduce(s, scratch);
  if (threadIdx.x == 0) mean0 = s.v[0] / static_cast<double>(K);
  __syncthreads();
  return mean0;
}

template <typename T>
__global__ void __launch_bounds__(kWsThreads)
    ws_forward_kernel(const T* w, T* w_hat, int64_t K, int convention, double eps) {
  __shared__ Sums<double, 2> scratch[32];
  __shared__ double shift, inv;
  const T* x = w + static_cast<int64_t>(blockIdx.x) * K;
  T* y = w_hat + static_cast<int64_t>(blockIdx.x) * K;
  const double mean0 = row_mean0(x, K);
  Sums<double, 2> s{};  // d, d^2 around mean0
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    const double d = load_double(x, i) - mean0;
    s.v[0] += d;
    s.v[1] += d * d;
  }
  s = block_reduce(s, scratch);
  if (threadIdx.x == 0) {
    const RowMoments m = row_moments(mean0, s.v[0], s.v[1], K);
    shift = m.shift;
    inv = convention == WS_CONVENTION_TIMM ? 1.0 / sqrt(m.m2 / static_cast<double>(K) + eps)
                                           : 1.0 / (qiao_std(m.m2, K) + eps);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    y[i] = store_double<T>((load_double(x, i) - shift) * inv);
  }
}

// dw = a (dy - mean(dy)) - b (w - mean), a and b per convention as in the CPU backward.
template <typename T>
__global__ void __launch_bounds__(kWsThreads)
    ws_backward_kernel(const T* dy, const T* w, T* dw, int64_t K, int convention, double eps) {
  __shared__ Sums<double, 4> scratch[32];
  __shared__ double shift, mean_dy, a, b;
  const int64_t offset = static_cast<int64_t>(blockIdx.x) * K;
  const T *x = w + offset, *g = dy + offset;
  T* out = dw + offset;
  const double mean0 = row_mean0(x, K);
  Sums<double, 4> s{};  // d, d^2, dy, dy d
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    const double d = load_double(x, i) - mean0, gi = load_double(g, i);
    s.v[0] += d;
    s.v[1] += d * d;
    s.v[2] += gi;
    s.v[3] += gi * d;
  }
  s = block_reduce(s, scratch);
  if (threadIdx.x == 0) {
    const double kd = static_cast<double>(K);
    const RowMoments m = row_moments(mean0, s.v[0], s.v[1], K);
    const double sum_dy_c = s.v[3] - m.correction * s.v[2];
    shift = m.shift;
    mean_dy = s.v[2] / kd;
    if (convention == WS_CONVENTION_TIMM) {
      a = 1.0 / sqrt(m.m2 / kd + eps);
      b = a * a * a * sum_dy_c / kd;
    } else {
      const double std_u = qiao_std(m.m2, K), scale = std_u + eps;
      a = 1.0 / scale;
      b = std_u > 0.0 ? sum_dy_c / (scale * scale * static_cast<double>(K - 1) * std_u) : 0.0;
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    out[i] = store_double<T>(a * (load_double(g, i) - mean_dy) - b * (load_double(x, i) - shift));
  }
}

// The element type a GN_DTYPE_* code names, for launch_rows's callbacks.
template <typename T>
struct Type {
  using type = T;
};

bool valid(int64_t O, int64_t K, int convention, double eps) {
  return O > 0 && K > 0 && O <= 2147483647 && (K * O) / O == K &&
         (convention == WS_CONVENTION_QIAO || convention == WS_CONVENTION_TIMM) &&
         std::isfinite(eps) && eps > 0.0;
}

// Checks the arguments, then runs launch(Type<T>{}, grid, block, stream) for dtype's T (its
// kernel launches: one block of kWsThreads per output channel) and reports the launch; a dtype
// the kernels lack launches nothing.
template <typename Launch>
int launch_rows(int dtype, int64_t O, int64_t K, int convention, double eps, void* stream,
                Launch&& launch) {
  if (!valid(O, K, convention, eps)) return GN_STATUS_BAD_ARGUMENT;
  const dim3 grid(static_cast<unsigned>(O)), block(kWsThreads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case GN_DTYPE_FLOAT32: launch(Type<float>{}, grid, block, s); break;
    case GN_DTYPE_FLOAT64: launch(Type<double>{}, grid, block, s); break;
    case GN_DTYPE_FLOAT16: launch(Type<__half>{}, grid, block, s); break;
    default: return GN_STATUS_BAD_DTYPE;
  }
  return launch_status();
}

}  // namespace
}  // namespace gn_cuda

extern "C" int ws_cuda_forward(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                               int convention, double eps, void* stream) {
  using namespace gn_cuda;
  return launch_rows(dtype, O, K, convention, eps, stream,
                     [&](auto type, dim3 grid, dim3 block, cudaStream_t s) {
    using T = typename decltype(type)::type;
    ws_forward_kernel<T><<<grid, block, 0, s>>>(static_cast<const T*>(w), static_cast<T*>(w_hat), K, convention, eps);
  });
}

extern "C" int ws_cuda_backward(int dtype, const void* dy, const void* w, void* dw, int64_t O,
                                int64_t K, int convention, double eps, void* stream) {
  using namespace gn_cuda;
  return launch_rows(dtype, O, K, convention, eps, stream,
                     [&](auto type, dim3 grid, dim3 block, cudaStream_t s) {
    using T = typename decltype(type)::type;
    ws_backward_kernel<T><<<grid, block, 0, s>>>(static_cast<const T*>(dy), static_cast<const T*>(w), static_cast<T*>(dw), K, convention, eps);
  });
}
