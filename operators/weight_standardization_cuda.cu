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
    const double kd = static_cast<double>(K), correction = s.v[0] / kd;
    const double m2_raw = s.v[1] - s.v[0] * correction;
    const double m2 = m2_raw < 0.0 ? 0.0 : m2_raw;  // NaN stays NaN
    shift = mean0 + correction;
    inv = convention == WS_CONVENTION_TIMM ? 1.0 / sqrt(m2 / kd + eps)
                                           : 1.0 / (qiao_std(m2, K) + eps);
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
    const double kd = static_cast<double>(K), correction = s.v[0] / kd;
    const double m2_raw = s.v[1] - s.v[0] * correction;
    const double m2 = m2_raw < 0.0 ? 0.0 : m2_raw;  // NaN stays NaN
    const double sum_dy_c = s.v[3] - correction * s.v[2];
    shift = mean0 + correction;
    mean_dy = s.v[2] / kd;
    if (convention == WS_CONVENTION_TIMM) {
      a = 1.0 / sqrt(m2 / kd + eps);
      b = a * a * a * sum_dy_c / kd;
    } else {
      const double std_u = qiao_std(m2, K), scale = std_u + eps;
      a = 1.0 / scale;
      b = std_u > 0.0 ? sum_dy_c / (scale * scale * static_cast<double>(K - 1) * std_u) : 0.0;
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < K; i += blockDim.x) {
    out[i] = store_double<T>(a * (load_double(g, i) - mean_dy) - b * (load_double(x, i) - shift));
  }
}

bool valid(int64_t O, int64_t K, int convention, double eps) {
  return O > 0 && K > 0 && O <= 2147483647 && (K * O) / O == K &&
         (convention == WS_CONVENTION_QIAO || convention == WS_CONVENTION_TIMM) &&
         std::isfinite(eps) && eps > 0.0;
}

}  // namespace
}  // namespace gn_cuda

extern "C" int ws_cuda_forward(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                               int convention, double eps, void* stream) {
  using namespace gn_cuda;
  if (!valid(O, K, convention, eps)) return GN_STATUS_BAD_ARGUMENT;
  const dim3 grid(static_cast<unsigned>(O)), block(kWsThreads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case GN_DTYPE_FLOAT32:
      ws_forward_kernel<float><<<grid, block, 0, s>>>(static_cast<const float*>(w), static_cast<float*>(w_hat), K, convention, eps);
      break;
    case GN_DTYPE_FLOAT64:
      ws_forward_kernel<double><<<grid, block, 0, s>>>(static_cast<const double*>(w), static_cast<double*>(w_hat), K, convention, eps);
      break;
    case GN_DTYPE_FLOAT16:
      ws_forward_kernel<__half><<<grid, block, 0, s>>>(static_cast<const __half*>(w), static_cast<__half*>(w_hat), K, convention, eps);
      break;
    default:
      return GN_STATUS_BAD_DTYPE;
  }
  return launch_status();
}

extern "C" int ws_cuda_backward(int dtype, const void* dy, const void* w, void* dw, int64_t O,
                                int64_t K, int convention, double eps, void* stream) {
  using namespace gn_cuda;
  if (!valid(O, K, convention, eps)) return GN_STATUS_BAD_ARGUMENT;
  const dim3 grid(static_cast<unsigned>(O)), block(kWsThreads);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case GN_DTYPE_FLOAT32:
      ws_backward_kernel<float><<<grid, block, 0, s>>>(static_cast<const float*>(dy), static_cast<const float*>(w), static_cast<float*>(dw), K, convention, eps);
      break;
    case GN_DTYPE_FLOAT64:
      ws_backward_kernel<double><<<grid, block, 0, s>>>(static_cast<const double*>(dy), static_cast<const double*>(w), static_cast<double*>(dw), K, convention, eps);
      break;
    case GN_DTYPE_FLOAT16:
      ws_backward_kernel<__half><<<grid, block, 0, s>>>(static_cast<const __half*>(dy), static_cast<const __half*>(w), static_cast<__half*>(dw), K, convention, eps);
      break;
    default:
      return GN_STATUS_BAD_DTYPE;
  }
  return launch_status();
}
