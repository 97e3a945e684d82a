// GroupNorm forward on CUDA (docs/design.md §2): per-(n, g) mean and rstd from Welford moments
// merged with Chan's rule, then y = a[n,c]*(x - mean) + beta[c] with a = gamma*rstd.
//
// The moments are those of x - pivot, the pivot being the group's first element. A float mean
// is off by up to half an ulp of |mean|; rstd (up to 1/sqrt(eps) when var << eps) turns that into
// errors well above 1e-5 in y when the group is near-constant or far from zero. Shifted, the
// reduced mean ms is of the order of the spread, so its rounding is too, and x - pivot is exact
// for x near the pivot; y = a*(x - pivot) + (beta - ms*a) then never rounds the mean itself.
// One pass over x still: every thread reads the pivot before its loop. An outlying first
// element makes ms as large as |pivot - mean|: no worse than no pivot while that is < |mean|.
//
// Kernels, in launch order on the caller's stream:
//  1. partial moments: many blocks per group when groups are few and large (batch 2, or a
//     diffusion-size 8x512x64x64), one per group otherwise; each writes (count, mean, m2) of
//     x - pivot.
//     - channels-first: a group is one contiguous run of D*S elements, cut into `split` chunks.
//     - channels-last: blocks walk rows of (s, c) tiles coalesced along C and keep per-channel
//       moments of `split` row-chunks; the group merge happens in step 2.
//  2. finalize: one block per (n, g) merges its partials in a fixed order (deterministic,
//     no atomics), writes mean = pivot + ms (rounded to Acc, the output's meaning) and rstd,
//     and the per-(n, c) coefficients (a, pivot, beta - ms*a). Where the merged moments are
//     not finite although x is (|x| past ~1e18 in float32, ~1e154 in float64: the squares
//     overflow), the block recomputes its group's moments from (x - pivot) / p, p a power of
//     two at or above max |x - pivot|, and forms rstd = 1 / hypot(p*sqrt(var_p), sqrt(eps))
//     without var itself (docs/design.md §2). A test per group is all the fast path pays.
//  3. the elementwise pass (group_norm_cuda_affine.cuh), which also adds the fused form's
//     residual and applies its activation.
#include <cstdio>

#include "group_norm_cuda_affine.cuh"  // and group_norm_cuda_common.cuh

namespace gn_cuda {

namespace {
thread_local char last_cuda_error[256] = "";
}  // namespace

void record_cuda_error(cudaError_t error) {
  std::snprintf(last_cuda_error, sizeof(last_cuda_error), "%s: %s", cudaGetErrorName(error),
                cudaGetErrorString(error));
}

namespace {

// Offset of group (n, g)'s first element; only meaningful when S > 0.
__device__ __forceinline__ int64_t pivot_offset(int64_t n, int64_t g, int64_t C, int64_t S,
                                                int64_t D, bool channels_last) {
  return n * C * S + g * D * (channels_last ? 1 : S);
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) moments_contiguous_kernel(
    const T* __restrict__ x, int64_t group_size, int64_t chunk,
    Moments<typename AccOf<T>::type>* __restrict__ partial) {
  using Acc = typename AccOf<T>::type;
  __shared__ Moments<Acc> scratch[32];
  const int64_t group = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t end = begin + chunk < group_size ? begin + chunk : group_size;
  const T* base = x + group * group_size;
  // Every block of the group must shift by the same pivot, or their partials would not merge.
  const Acc pivot = begin < end ? to_acc(base[0]) : Acc(0);
  Moments<Acc> m{};
#pragma unroll 4
  for (int64_t i = begin + threadIdx.x * kVec; i < end; i += static_cast<int64_t>(blockDim.x) * kVec) {
    const Pack<T, kVec> p = load_pack<T, kVec>(base + i);
    // Exact two-pass moments of the pack in registers, then one Chan merge per pack.
    Acc sum = 0;
#pragma unroll
    for (int v = 0; v < kVec; ++v) sum += to_acc(p.v[v]) - pivot;
    Moments<Acc> pm;
    pm.count = Acc(kVec);
    pm.mean = sum / Acc(kVec);
    pm.m2 = 0;
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      const Acc d = (to_acc(p.v[v]) - pivot) - pm.mean;
      pm.m2 += d * d;
    }
    m = combine(m, pm);
  }
  m = block_reduce(m, scratch);
  if (threadIdx.x == 0) partial[group * gridDim.y + blockIdx.y] = m;
}

// blockDim = (TX, TY), TX*TY == kThreads, both powers of two. Thread (tx, ty) owns channels
// c0..c0+kVec-1 and rows s_begin+ty, s_begin+ty+TY, ...; all its channels share one count, so
// the Welford update costs one division per row rather than per element.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) moments_columns_kernel(
    const T* __restrict__ x, int64_t N, int64_t S, int64_t C, int64_t D, int64_t rows_per_chunk,
    Moments<typename AccOf<T>::type>* __restrict__ partial) {
  using Acc = typename AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  Moments<Acc>* smem = reinterpret_cast<Moments<Acc>*>(smem_raw);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TX = blockDim.x, TY = blockDim.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * TX + tx) * kVec;
  const bool active = c0 < C;
  const int64_t split = gridDim.y;
  const int64_t s_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t s_end = s_begin + rows_per_chunk < S ? s_begin + rows_per_chunk : S;
  Moments<Acc>* mine = smem + (ty * TX + tx) * kVec;
  for (int64_t n = blockIdx.z; n < N; n += gridDim.z) {
    Acc count = 0;
    Acc mean[kVec];
    Acc m2[kVec];
    Acc pivot[kVec];  // a pack may span groups when D < kVec
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      mean[v] = m2[v] = 0;
      pivot[v] = active && s_begin < s_end
                     ? to_acc(x[pivot_offset(n, (c0 + v) / D, C, S, D, true)]) : Acc(0);
    }
    if (active) {
      const T* column = x + n * S * C + c0;
#pragma unroll 4
      for (int64_t s = s_begin + ty; s < s_end; s += TY) {
        const Pack<T, kVec> p = load_pack<T, kVec>(column + s * C);
        count += 1;
        const Acc inv = Acc(1) / count;
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const Acc xv = to_acc(p.v[v]) - pivot[v];
          const Acc d = xv - mean[v];
          mean[v] += d * inv;
          m2[v] += d * (xv - mean[v]);
        }
      }
    }
#pragma unroll
    for (int v = 0; v < kVec; ++v) mine[v] = Moments<Acc>{count, mean[v], m2[v]};
    fold_rows_and_store<kVec>(mine, active, partial, (n * split + blockIdx.y) * C + c0);
  }
}

// Element k < D*S of group (n, g).
template <typename T>
__device__ __forceinline__ T group_element(const T* x, int64_t n, int64_t g, int64_t k, int64_t C,
                                           int64_t S, int64_t D, bool channels_last) {
  return channels_last ? x[n * S * C + (k / D) * C + g * D + k % D] : x[n * C * S + g * D * S + k];
}

// The overflow fallback: block-wide moments of (x - pivot) / p over group (n, g); *p_out gets
// p (in every thread). Leaves m and *p_out as they are where max |x - pivot| is not finite
// (a non-finite x: its NaN/inf is the answer) or 0. Starts with a barrier.
template <typename T, typename Acc>
__device__ void rescaled_moments(const T* x, int64_t n, int64_t g, int64_t C, int64_t S,
                                 int64_t D, bool channels_last, Acc pivot, Moments<Acc>* m,
                                 Acc* p_out) {
  __shared__ MaxAbs<Acc> max_scratch[32];
  __shared__ Moments<Acc> scratch[32];
  __shared__ Acc scale[2];  // p, 1/p; 0 when there is nothing to redo
  const int64_t count = D * S;
  __syncthreads();
  MaxAbs<Acc> peak{Acc(0)};
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x)
    peak.v = fmax(peak.v, fabs(to_acc(group_element(x, n, g, k, C, S, D, channels_last)) - pivot));
  peak = block_reduce(peak, max_scratch);
  if (threadIdx.x == 0) {
    int exponent = 0;
    frexp(peak.v, &exponent);
    const bool redo = isfinite(peak.v) && peak.v > Acc(0);
    scale[0] = redo ? ldexp(Acc(1), exponent) : Acc(0);
    scale[1] = redo ? ldexp(Acc(1), -exponent) : Acc(0);
  }
  __syncthreads();
  const Acc p = scale[0], inv_p = scale[1];
  if (p == Acc(0)) return;
  Moments<Acc> r{};
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) {
    const Acc v = (to_acc(group_element(x, n, g, k, C, S, D, channels_last)) - pivot) * inv_p;
    r = combine(r, Moments<Acc>{Acc(1), v, Acc(0)});
  }
  r = block_reduce(r, scratch);
  if (threadIdx.x == 0) *m = r;
  *p_out = p;
}

// The partials of group (n, g) sit at base + i*stride_i + j, i < count_i, j < count_j.
template <typename T, typename PT, typename Acc = typename AccOf<T>::type>
__global__ void __launch_bounds__(kThreads) finalize_moments_kernel(
    const Moments<Acc>* __restrict__ partial, int64_t stride_n, int64_t stride_g,
    int64_t count_i, int64_t stride_i, int64_t count_j, const T* __restrict__ x,
    const PT* __restrict__ gamma, const PT* __restrict__ beta, int64_t C, int64_t S, int64_t G,
    bool channels_last, Acc eps, Acc* __restrict__ mean_out, Acc* __restrict__ rstd_out,
    Acc* __restrict__ scale, Acc* __restrict__ centre, Acc* __restrict__ shift) {
  __shared__ Moments<Acc> scratch[32];
  __shared__ Acc stats[2];  // ms (mean of x - pivot), rstd
  const int64_t ng = blockIdx.x;
  const int64_t n = ng / G;
  const int64_t g = ng - n * G;
  const int64_t D = C / G;
  const Moments<Acc>* base = partial + n * stride_n + g * stride_g;
  Moments<Acc> m{};
  const int64_t total = count_i * count_j;
  for (int64_t k = threadIdx.x; k < total; k += blockDim.x) {
    const int64_t i = k / count_j;
    m = combine(m, base[i * stride_i + (k - i * count_j)]);
  }
  m = block_reduce(m, scratch);
  __shared__ bool overflowed;
  if (threadIdx.x == 0) overflowed = !isfinite(m.mean) || !isfinite(m.m2);
  __syncthreads();
  const Acc pivot = S > 0 ? to_acc(x[pivot_offset(n, g, C, S, D, channels_last)]) : Acc(0);
  Acc p = Acc(1);  // m is of (x - pivot) / p; stays 1 unless rescaled
  if (overflowed) rescaled_moments(x, n, g, C, S, D, channels_last, pivot, &m, &p);
  if (threadIdx.x == 0) {
    const Acc var = (m.count > Acc(0) && m.m2 > Acc(0)) ? m.m2 / m.count : Acc(0);
    const Acc rstd = p == Acc(1) ? Acc(1) / sqrt(var + eps)
                                 : Acc(1) / hypot(p * sqrt(var), sqrt(eps));
    const Acc ms = m.mean * p;
    if (mean_out) mean_out[ng] = pivot + ms;
    if (rstd_out) rstd_out[ng] = rstd;
    stats[0] = ms;
    stats[1] = rstd;
  }
  __syncthreads();
  const Acc ms = stats[0], rstd = stats[1];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const int64_t c = g * D + d;
    const Acc a = to_acc(gamma[c]) * rstd;
    scale[n * C + c] = a;
    centre[n * C + c] = pivot;
    shift[n * C + c] = to_acc(beta[c]) - ms * a;  // small: ms is of the order of the spread
  }
}

int threads_for(int64_t work_items) {
  return static_cast<int>(clamp64(round_up(work_items, 32), 32, kThreads));
}

template <typename T, typename PT>
int forward_impl(const void* x_, const void* gamma_, const void* beta_, const void* residual,
                 void* y_, void* mean_, void* rstd_, int64_t N, int64_t C, int64_t S, int64_t G,
                 int channels_last, int act, double eps, void* workspace, cudaStream_t stream) {
  using Acc = typename AccOf<T>::type;
  const T* x = static_cast<const T*>(x_);
  T* y = static_cast<T*>(y_);
  const int64_t D = C / G;
  const int64_t split = forward_split(N, C, S, G, channels_last);
  constexpr int kMax = max_vec<T>();

  WorkspaceCarver carve(workspace);
  Moments<Acc>* partial = carve.take<Moments<Acc>>(forward_partial_count(N, C, S, G, channels_last));
  Acc* scale = carve.take<Acc>(N * C);
  Acc* centre = carve.take<Acc>(N * C);
  Acc* shift = carve.take<Acc>(N * C);

  int64_t stride_n, stride_g, count_i, stride_i, count_j;
  if (!channels_last) {
    const int64_t M = D * S;
    const int64_t chunk = round_up(ceil_div(M, split), 8);  // a multiple of every pack width
    const bool vec = M % kMax == 0 && aligned16(x);
    const int threads = threads_for(ceil_div(chunk, vec ? kMax : 1));
    const dim3 grid(static_cast<unsigned>(N * G), static_cast<unsigned>(split));
    if (vec)
      moments_contiguous_kernel<T, kMax><<<grid, threads, 0, stream>>>(x, M, chunk, partial);
    else
      moments_contiguous_kernel<T, 1><<<grid, threads, 0, stream>>>(x, M, chunk, partial);
    stride_n = G * split, stride_g = split, count_i = split, stride_i = 1, count_j = 1;
  } else {
    const int64_t rows_per_chunk = ceil_div(S, split);
    const ColumnsLaunch shape = columns_launch(N, C, split, kMax, aligned16(x));
    const size_t smem = static_cast<size_t>(kThreads) * shape.pack * sizeof(Moments<Acc>);
    if (shape.pack == kMax)
      moments_columns_kernel<T, kMax><<<shape.grid, shape.block, smem, stream>>>(x, N, S, C, D, rows_per_chunk, partial);
    else
      moments_columns_kernel<T, 1><<<shape.grid, shape.block, smem, stream>>>(x, N, S, C, D, rows_per_chunk, partial);
    stride_n = split * C, stride_g = D, count_i = split, stride_i = C, count_j = D;
  }
  int status = launch_status();
  if (status != GN_STATUS_OK) return status;

  const int threads = threads_for(count_i * count_j > D ? count_i * count_j : D);
  finalize_moments_kernel<T, PT><<<static_cast<unsigned>(N * G), threads, 0, stream>>>(
      partial, stride_n, stride_g, count_i, stride_i, count_j, x, static_cast<const PT*>(gamma_),
      static_cast<const PT*>(beta_), C, S, G, channels_last != 0, static_cast<Acc>(eps),
      static_cast<Acc*>(mean_), static_cast<Acc*>(rstd_), scale, centre, shift);
  status = launch_status();
  if (status != GN_STATUS_OK) return status;

  const ChannelCoefficients<Acc> coef{scale, nullptr, centre, nullptr, shift};
  return launch_per_channel_affine<T>(x, static_cast<const T*>(residual), nullptr, coef, y,
                                      nullptr, N, C, S, channels_last, act, stream);
}

}  // namespace
}  // namespace gn_cuda

extern "C" size_t gn_cuda_forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                                  int channels_last) {
  using namespace gn_cuda;
  if (check_shape(N, C, S, G) != GN_STATUS_OK || N == 0) return 0;
  // Sized for the widest accumulation type (double) so one number serves every dtype.
  return kSliceAlign +
         slice_bytes(forward_partial_count(N, C, S, G, channels_last), sizeof(Moments<double>)) +
         3 * slice_bytes(N * C, sizeof(double));
}

extern "C" int gn_cuda_forward(int dtype, int param_dtype, const void* x, const void* gamma,
                               const void* beta, const void* residual, void* y, void* mean,
                               void* rstd, int64_t N, int64_t C, int64_t S, int64_t G,
                               int channels_last, int act, double eps, void* workspace,
                               void* stream) {
  using namespace gn_cuda;
  if (!gn_act::valid(act)) return GN_STATUS_BAD_ARGUMENT;
  int status = check_dtypes(dtype, param_dtype);
  if (status != GN_STATUS_OK) return status;
  status = check_shape(N, C, S, G);
  if (status != GN_STATUS_OK) return status;
  if (N * G > INT32_MAX) return GN_STATUS_BAD_SHAPE;  // one finalize block per (n, g)
  if (N == 0) return GN_STATUS_OK;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int cl = channels_last ? 1 : 0;
  switch (dtype) {
    case GN_DTYPE_FLOAT32:
      return forward_impl<float, float>(x, gamma, beta, residual, y, mean, rstd, N, C, S, G, cl, act, eps, workspace, s);
    case GN_DTYPE_FLOAT64:
      return forward_impl<double, double>(x, gamma, beta, residual, y, mean, rstd, N, C, S, G, cl, act, eps, workspace, s);
    default:
      if (param_dtype == GN_DTYPE_FLOAT32)
        return forward_impl<__half, float>(x, gamma, beta, residual, y, mean, rstd, N, C, S, G, cl, act, eps, workspace, s);
      return forward_impl<__half, __half>(x, gamma, beta, residual, y, mean, rstd, N, C, S, G, cl, act, eps, workspace, s);
  }
}

extern "C" const char* gn_cuda_last_error(void) { return gn_cuda::last_cuda_error; }
