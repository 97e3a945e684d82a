// GroupNorm backward on CUDA (docs/design.md §2, the per-channel form):
//   per (n, c):  ds = sum_s dy*(x - mean),  db = sum_s dy,  dev = sum_s (x - mean)
//   per (n, g):  r = sum_{c in g} dev / M,  M = D*S;  ds -= r*db  (see below)
//   dgamma[c] = sum_n ds*rstd,  dbeta[c] = sum_n db
//   per (n, g):  gds = sum_{c in g} gamma*ds,  m = sum_{c in g} db / M,  B = -rstd^3*gds/M
//   dx = rstd*gamma*(dy - m) + B*(x - mean - r) + rstd*(gamma*m - mean_g(gamma*dy))
// Centering on the mean (rather than sum dy*x) keeps ds well conditioned when |mean| >> std.
// The mean arrives rounded to Acc, up to half an ulp of |mean| off, which rstd^2 (up to 1/eps
// when var << eps) would show in dx and dgamma. x - mean is exact for a near-constant group, so
// r is the exact mean's offset from the rounded one; re-centring on it costs one more
// accumulator in the pass that already reads x and dy.
// dy is centred on its group mean m for the same reason as x on its own: rstd*gamma*dy and
// rstd*mean_g(gamma*dy) cancel exactly in a one-element group (dx = 0), and rounded apart they
// left rstd*|gamma*dy|*ulp there. The last term is a per-channel constant relative to the
// group's first gamma g0, rstd*((gamma - g0)*m - sum_{c in g} (gamma - g0)*db / M), whose
// products all have a factor that is exactly 0 when a group has one channel, so no fused
// multiply-add leaves anything of it. (m itself is rounded to Acc: that costs what an ulp of dy
// costs, not an ulp of the mean times rstd^2.)
//
// Kernels, in launch order on the caller's stream:
//  1. partial (ds, db, dev) per (n, chunk, c): a warp per row chunk when channels-first, coalesced
//     column tiles when channels-last; long rows are cut into `split` chunks.
//  2. coefficients: a block per (n, g) sums the chunks in a fixed order, keeps the re-centred
//     (ds, db) per (n, c) and writes per-(n, c) coefficients of
//     dx = a*(dy - m) + B*(x - mean) + K.
//  3. dgamma/dbeta: per channel, 8 threads stride over n and merge in a fixed order (no atomics).
//  4. the elementwise pass (group_norm_cuda_common.cuh).
#include "group_norm_cuda_common.cuh"

namespace gn_cuda {
namespace {

constexpr int kWarpsPerBlock = kThreads / 32;

template <typename Acc> using GradSums = Sums<Acc, 3>;  // ds, db, dev

template <typename Acc>
__device__ __forceinline__ void accumulate(GradSums<Acc>& acc, Acc dy, Acc centred) {
  acc.v[0] += dy * centred;
  acc.v[1] += dy;
  acc.v[2] += centred;
}

template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) grad_sums_rows_kernel(
    const T* __restrict__ dy, const T* __restrict__ x,
    const typename AccOf<T>::type* __restrict__ mean, int64_t N, int64_t C, int64_t S,
    int64_t G, int64_t split, int64_t chunk,
    GradSums<typename AccOf<T>::type>* __restrict__ partial) {
  using Acc = typename AccOf<T>::type;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (item >= N * C * split) return;  // the whole warp shares `item`, so it leaves together
  const int64_t row = item / split;
  const int64_t p = item - row * split;
  const int64_t n = row / C;
  const int64_t c = row - n * C;
  const Acc mu = mean[n * G + c / (C / G)];
  const int64_t begin = p * chunk;
  const int64_t end = begin + chunk < S ? begin + chunk : S;
  const T* dy_row = dy + row * S;
  const T* x_row = x + row * S;
  GradSums<Acc> acc{};
#pragma unroll 4
  for (int64_t i = begin + lane * kVec; i < end; i += 32 * kVec) {
    const Pack<T, kVec> g = load_pack<T, kVec>(dy_row + i);
    const Pack<T, kVec> xv = load_pack<T, kVec>(x_row + i);
#pragma unroll
    for (int v = 0; v < kVec; ++v) accumulate(acc, to_acc(g.v[v]), to_acc(xv.v[v]) - mu);
  }
  acc = warp_reduce(acc);
  if (lane == 0) partial[(n * split + p) * C + c] = acc;
}

// Same tiling as moments_columns_kernel: blockDim = (TX, TY), TX*TY == kThreads.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) grad_sums_columns_kernel(
    const T* __restrict__ dy, const T* __restrict__ x,
    const typename AccOf<T>::type* __restrict__ mean, int64_t N, int64_t S, int64_t C,
    int64_t G, int64_t rows_per_chunk, GradSums<typename AccOf<T>::type>* __restrict__ partial) {
  using Acc = typename AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  GradSums<Acc>* smem = reinterpret_cast<GradSums<Acc>*>(smem_raw);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int TX = blockDim.x, TY = blockDim.y;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * TX + tx) * kVec;
  const bool active = c0 < C;
  const int64_t D = C / G;
  const int64_t split = gridDim.y;
  const int64_t s_begin = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  const int64_t s_end = s_begin + rows_per_chunk < S ? s_begin + rows_per_chunk : S;
  GradSums<Acc>* mine = smem + (ty * TX + tx) * kVec;
  for (int64_t n = blockIdx.z; n < N; n += gridDim.z) {
    GradSums<Acc> acc[kVec];
    Acc mu[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      acc[v] = GradSums<Acc>{};
      mu[v] = active ? mean[n * G + (c0 + v) / D] : Acc(0);
    }
    if (active) {
      const int64_t offset = n * S * C + c0;
#pragma unroll 4
      for (int64_t s = s_begin + ty; s < s_end; s += TY) {
        const Pack<T, kVec> g = load_pack<T, kVec>(dy + offset + s * C);
        const Pack<T, kVec> xv = load_pack<T, kVec>(x + offset + s * C);
#pragma unroll
        for (int v = 0; v < kVec; ++v) accumulate(acc[v], to_acc(g.v[v]), to_acc(xv.v[v]) - mu[v]);
      }
    }
#pragma unroll
    for (int v = 0; v < kVec; ++v) mine[v] = acc[v];
    fold_rows_and_store<kVec>(mine, active, partial, (n * split + blockIdx.y) * C + c0);
  }
}

// What a group's coefficients are summed from: sum gamma*ds, sum gamma*db, sum dev, sum db and
// sum (gamma - g0)*db over its channels, ds not yet re-centred.
template <typename Acc> using GroupGradSums = Sums<Acc, 5>;

template <typename Acc, typename PT>
__global__ void __launch_bounds__(kThreads) grad_coefficients_kernel(
    const GradSums<Acc>* __restrict__ partial, int64_t split, const PT* __restrict__ gamma,
    const Acc* __restrict__ mean, const Acc* __restrict__ rstd, int64_t C, int64_t G, int64_t S,
    Acc* __restrict__ ds_total, Acc* __restrict__ db_total, Acc* __restrict__ coef_dy,
    Acc* __restrict__ coef_x, Acc* __restrict__ centre, Acc* __restrict__ dy_centre,
    Acc* __restrict__ coef_k) {
  __shared__ GroupGradSums<Acc> scratch[32];
  __shared__ Acc group_coefs[5];  // B, K's channel-independent part, r, m, rstd*m
  const int64_t ng = blockIdx.x;
  const int64_t n = ng / G;
  const int64_t g = ng - n * G;
  const int64_t D = C / G;
  const Acc r = rstd[ng];
  const Acc gamma_pivot = to_acc(gamma[g * D]);
  GroupGradSums<Acc> group_sums{};
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const int64_t c = g * D + d;
    GradSums<Acc> sums{};
    for (int64_t p = 0; p < split; ++p) sums = combine(sums, partial[(n * split + p) * C + c]);
    ds_total[n * C + c] = sums.v[0];
    db_total[n * C + c] = sums.v[1];
    const Acc gam = to_acc(gamma[c]);
    group_sums.v[0] += gam * sums.v[0];
    group_sums.v[1] += gam * sums.v[1];
    group_sums.v[2] += sums.v[2];
    group_sums.v[3] += sums.v[1];
    group_sums.v[4] += (gam - gamma_pivot) * sums.v[1];
    coef_dy[n * C + c] = r * gam;
  }
  group_sums = block_reduce(group_sums, scratch);
  if (threadIdx.x == 0) {
    const Acc M = Acc(D) * Acc(S);
    const Acc inv_m = M > Acc(0) ? Acc(1) / M : Acc(0);
    const Acc offset = group_sums.v[2] * inv_m;
    // sum gamma*(ds - offset*db): the re-centring of every channel's ds, summed.
    const Acc gds = group_sums.v[0] - offset * group_sums.v[1];
    const Acc b = -r * r * r * gds * inv_m;
    const Acc m = group_sums.v[3] * inv_m;
    group_coefs[0] = b;
    group_coefs[1] = -r * (group_sums.v[4] * inv_m) - b * offset;  // B*(x - mean - offset)
    group_coefs[2] = offset;
    group_coefs[3] = m;
    group_coefs[4] = r * m;
  }
  __syncthreads();
  const Acc mu = mean[ng], offset = group_coefs[2];
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const int64_t c = n * C + g * D + d;
    ds_total[c] -= offset * db_total[c];  // this thread wrote both above
    coef_x[c] = group_coefs[0];
    centre[c] = mu;
    dy_centre[c] = group_coefs[3];
    coef_k[c] = (to_acc(gamma[g * D + d]) - gamma_pivot) * group_coefs[4] + group_coefs[1];
  }
}

// blockDim = (kParamColumns, kParamRows): a column of threads shares a channel and strides over
// n, then adds its kParamRows partial sums in a fixed order, so large batches keep many loads
// in flight and the result stays deterministic.
constexpr int kParamColumns = 32;
constexpr int kParamRows = kThreads / kParamColumns;

template <typename Acc, typename PT>
__global__ void __launch_bounds__(kThreads) param_grads_kernel(
    const Acc* __restrict__ ds_total, const Acc* __restrict__ db_total,
    const Acc* __restrict__ rstd, int64_t N, int64_t C, int64_t G, PT* __restrict__ dgamma,
    PT* __restrict__ dbeta) {
  __shared__ Sums<Acc, 2> partial[kParamRows][kParamColumns];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kParamColumns + threadIdx.x;
  Sums<Acc, 2> sums{};  // (dgamma, dbeta)
  if (c < C) {
    const int64_t g = c / (C / G);
#pragma unroll 4
    for (int64_t n = threadIdx.y; n < N; n += kParamRows) {
      sums.v[0] += ds_total[n * C + c] * rstd[n * G + g];
      sums.v[1] += db_total[n * C + c];
    }
  }
  partial[threadIdx.y][threadIdx.x] = sums;
  __syncthreads();
  if (threadIdx.y != 0 || c >= C) return;
  for (int r = 1; r < kParamRows; ++r) sums = combine(sums, partial[r][threadIdx.x]);
  if (dgamma) dgamma[c] = FromAcc<PT>::cast(sums.v[0]);
  if (dbeta) dbeta[c] = FromAcc<PT>::cast(sums.v[1]);
}

// The fused form's prologue: dz = dy * act'(z), z = GN(x) + residual recomputed per element
// from the forward's mean and rstd (no hidden output). kAct = GN_ACT_NONE copies dy (d residual
// of the unactivated form). dz may be dx's buffer: each element is read before it is written.
template <typename T, typename PT, int kAct, typename Acc = typename AccOf<T>::type>
__global__ void __launch_bounds__(kThreads) activation_grad_kernel(
    const T* dy, const T* __restrict__ x, const PT* __restrict__ gamma,
    const PT* __restrict__ beta, const T* __restrict__ residual, const Acc* __restrict__ mean,
    const Acc* __restrict__ rstd, T* dz, int64_t N, int64_t C, int64_t S, int64_t G,
    bool channels_last) {
  const int64_t total = N * C * S, D = C / G;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Acc slope = Acc(1);
    if (kAct != GN_ACT_NONE) {
      const int64_t n = i / (C * S);
      const int64_t c = channels_last ? i % C : (i / S) % C;
      const int64_t t = n * G + c / D;
      Acc z = (to_acc(x[i]) - mean[t]) * (to_acc(gamma[c]) * rstd[t]) + to_acc(beta[c]);
      if (residual) z += to_acc(residual[i]);
      slope = gn_act::slope<kAct>(z);
    }
    dz[i] = FromAcc<T>::cast(to_acc(dy[i]) * slope);
  }
}

template <typename T, typename PT>
int launch_activation_grad(const T* dy, const T* x, const PT* gamma, const PT* beta,
                           const T* residual, const typename AccOf<T>::type* mean,
                           const typename AccOf<T>::type* rstd, T* dz, int64_t N, int64_t C,
                           int64_t S, int64_t G, int channels_last, int act,
                           cudaStream_t stream) {
  const unsigned grid = static_cast<unsigned>(clamp64(ceil_div(N * C * S, kThreads), 1, 65535));
  const bool cl = channels_last != 0;
  if (act == GN_ACT_RELU)
    activation_grad_kernel<T, PT, GN_ACT_RELU><<<grid, kThreads, 0, stream>>>(dy, x, gamma, beta, residual, mean, rstd, dz, N, C, S, G, cl);
  else if (act == GN_ACT_SILU)
    activation_grad_kernel<T, PT, GN_ACT_SILU><<<grid, kThreads, 0, stream>>>(dy, x, gamma, beta, residual, mean, rstd, dz, N, C, S, G, cl);
  else
    activation_grad_kernel<T, PT, GN_ACT_NONE><<<grid, kThreads, 0, stream>>>(dy, x, gamma, beta, residual, mean, rstd, dz, N, C, S, G, cl);
  return launch_status();
}

template <typename T, typename PT>
int backward_impl(const void* dy_, const void* x_, const void* gamma_, const void* beta_,
                  const void* residual_, const void* mean_, const void* rstd_, void* dx_,
                  void* dgamma_, void* dbeta_, void* dresidual_, int64_t N, int64_t C,
                  int64_t S, int64_t G, int channels_last, int act, void* workspace,
                  cudaStream_t stream) {
  using Acc = typename AccOf<T>::type;
  const T* dy = static_cast<const T*>(dy_);
  const T* x = static_cast<const T*>(x_);
  const Acc* mean = static_cast<const Acc*>(mean_);
  const Acc* rstd = static_cast<const Acc*>(rstd_);
  const int64_t split = backward_split(N, C, S, G, channels_last);
  constexpr int kMax = max_vec<T>();

  WorkspaceCarver carve(workspace);
  GradSums<Acc>* partial = carve.take<GradSums<Acc>>(N * split * C);
  Acc* ds_total = carve.take<Acc>(N * C);
  Acc* db_total = carve.take<Acc>(N * C);
  Acc* coef_dy = carve.take<Acc>(N * C);
  Acc* coef_x = carve.take<Acc>(N * C);
  Acc* centre = carve.take<Acc>(N * C);
  Acc* dy_centre = carve.take<Acc>(N * C);
  Acc* coef_k = carve.take<Acc>(N * C);

  int status;
  if (N > 0 && S > 0 && (act != GN_ACT_NONE || dresidual_)) {  // GN's backward then runs on dz
    T* dz = static_cast<T*>(dresidual_ ? dresidual_ : dx_);
    status = launch_activation_grad<T, PT>(dy, x, static_cast<const PT*>(gamma_),
                                           static_cast<const PT*>(beta_),
                                           static_cast<const T*>(residual_), mean, rstd, dz, N,
                                           C, S, G, channels_last, act, stream);
    if (status != GN_STATUS_OK) return status;
    dy = dz;
  }
  if (N > 0) {
    if (!channels_last) {
      const int64_t chunk = round_up(ceil_div(S, split), 8);
      const bool vec = S % kMax == 0 && aligned16(dy) && aligned16(x);
      const int64_t blocks = ceil_div(N * C * split, kWarpsPerBlock);
      if (blocks > INT32_MAX) return GN_STATUS_BAD_SHAPE;
      const unsigned grid = static_cast<unsigned>(blocks);
      if (vec)
        grad_sums_rows_kernel<T, kMax><<<grid, kThreads, 0, stream>>>(dy, x, mean, N, C, S, G, split, chunk, partial);
      else
        grad_sums_rows_kernel<T, 1><<<grid, kThreads, 0, stream>>>(dy, x, mean, N, C, S, G, split, chunk, partial);
    } else {
      const int64_t rows_per_chunk = ceil_div(S, split);
      const bool vec = C % kMax == 0 && aligned16(dy) && aligned16(x);
      const int pack = vec ? kMax : 1;
      const int tx = pow2_at_least(ceil_div(C, pack), 32);
      const dim3 block(tx, kThreads / tx);
      const dim3 grid(static_cast<unsigned>(ceil_div(C, static_cast<int64_t>(tx) * pack)),
                      static_cast<unsigned>(split), grid_yz(N));
      const size_t smem = static_cast<size_t>(kThreads) * pack * sizeof(GradSums<Acc>);
      if (vec)
        grad_sums_columns_kernel<T, kMax><<<grid, block, smem, stream>>>(dy, x, mean, N, S, C, G, rows_per_chunk, partial);
      else
        grad_sums_columns_kernel<T, 1><<<grid, block, smem, stream>>>(dy, x, mean, N, S, C, G, rows_per_chunk, partial);
    }
    if ((status = launch_status()) != GN_STATUS_OK) return status;

    const int threads = static_cast<int>(clamp64(round_up(C / G, 32), 32, kThreads));
    grad_coefficients_kernel<Acc, PT><<<static_cast<unsigned>(N * G), threads, 0, stream>>>(
        partial, split, static_cast<const PT*>(gamma_), mean, rstd, C, G, S, ds_total, db_total,
        coef_dy, coef_x, centre, dy_centre, coef_k);
    if ((status = launch_status()) != GN_STATUS_OK) return status;
  }

  if (dgamma_ || dbeta_) {
    const dim3 block(kParamColumns, kParamRows);
    param_grads_kernel<Acc, PT><<<static_cast<unsigned>(ceil_div(C, kParamColumns)), block, 0, stream>>>(
        ds_total, db_total, rstd, N, C, G, static_cast<PT*>(dgamma_), static_cast<PT*>(dbeta_));
    if ((status = launch_status()) != GN_STATUS_OK) return status;
  }
  if (dx_ == nullptr) return GN_STATUS_OK;
  const ChannelCoefficients<Acc> coef{coef_dy, coef_x, centre, dy_centre, coef_k};
  return launch_per_channel_affine<T>(dy, x, coef, static_cast<T*>(dx_), N, C, S, channels_last,
                                      GN_ACT_NONE, stream);
}

}  // namespace
}  // namespace gn_cuda

extern "C" size_t gn_cuda_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                                   int channels_last) {
  using namespace gn_cuda;
  if (check_shape(N, C, S, G) != GN_STATUS_OK || N == 0) return 0;
  const int64_t split = backward_split(N, C, S, G, channels_last);
  // Sized for the widest accumulation type (double) so one number serves every dtype.
  return kSliceAlign + slice_bytes(N * split * C, sizeof(GradSums<double>)) +
         7 * slice_bytes(N * C, sizeof(double));
}

extern "C" int gn_cuda_backward(int dtype, int param_dtype, const void* dy, const void* x,
                                const void* gamma, const void* beta, const void* residual,
                                const void* mean, const void* rstd, void* dx, void* dgamma,
                                void* dbeta, void* dresidual, int64_t N, int64_t C, int64_t S,
                                int64_t G, int channels_last, int act, void* workspace,
                                void* stream) {
  using namespace gn_cuda;
  // The fused backward stages dz in dresidual or dx (group_norm_kernels.h).
  if (!gn_act::valid(act) || (act != GN_ACT_NONE && !dx && !dresidual)) {
    return GN_STATUS_BAD_ARGUMENT;
  }
  int status = check_dtypes(dtype, param_dtype);
  if (status != GN_STATUS_OK) return status;
  status = check_shape(N, C, S, G);
  if (status != GN_STATUS_OK) return status;
  if (N * G > INT32_MAX) return GN_STATUS_BAD_SHAPE;  // one coefficient block per (n, g)
  if (!dx && !dgamma && !dbeta && !dresidual) return GN_STATUS_OK;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int cl = channels_last ? 1 : 0;
  switch (dtype) {
    case GN_DTYPE_FLOAT32:
      return backward_impl<float, float>(dy, x, gamma, beta, residual, mean, rstd, dx, dgamma, dbeta, dresidual, N, C, S, G, cl, act, workspace, s);
    case GN_DTYPE_FLOAT64:
      return backward_impl<double, double>(dy, x, gamma, beta, residual, mean, rstd, dx, dgamma, dbeta, dresidual, N, C, S, G, cl, act, workspace, s);
    default:
      if (param_dtype == GN_DTYPE_FLOAT32)
        return backward_impl<__half, float>(dy, x, gamma, beta, residual, mean, rstd, dx, dgamma, dbeta, dresidual, N, C, S, G, cl, act, workspace, s);
      return backward_impl<__half, __half>(dy, x, gamma, beta, residual, mean, rstd, dx, dgamma, dbeta, dresidual, N, C, S, G, cl, act, workspace, s);
  }
}
