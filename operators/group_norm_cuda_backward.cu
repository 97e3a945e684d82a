// GroupNorm backward on CUDA (docs/design.md §2, the per-channel form):
//   per (n, c):  ds = sum_s dy*(x - mean),  db = sum_s dy,  dev = sum_s (x - mean)
//   per (n, g):  r = sum_{c in g} dev / M,  M = D*S;  ds -= r*db  (see below)
//   dgamma[c] = sum_n ds*rstd,  dbeta[c] = sum_n db
//   per (n, g):  gds = sum_{c in g} gamma*ds,  m = sum_{c in g} db / M,  B = -rstd^3*gds/M
//   dx = rstd*gamma*(dy - m) + B*(x - mean - r) + rstd*(gamma*m - mean_g(gamma*dy))
// B*(x - mean) is formed as (B/rstd)*((x - mean)*rstd): B itself leaves the range where |x| is
// huge (rstd = 1e-30 makes B ~ 1e-60, past float; 1e-300 makes it 1e-600, past double).
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
// The fused form, y = act(GN(x) [+ residual]): every sum above and dx take dz = dy*act'(z) for
// dy, z recomputed per element from x, mean, rstd, gamma, beta [and the residual] in the two
// passes that read dy (gn_act::grad_through, as on the CPU), so no dz pass or buffer exists;
// the elementwise pass also writes d residual = dz.
//
// Kernels, in launch order on the caller's stream:
//  1. partial (ds, db, dev) per (n, chunk, c): a warp per row chunk when channels-first, coalesced
//     column tiles when channels-last; long rows are cut into `split` chunks.
//  2. coefficients: a block per (n, g) sums the chunks in a fixed order, keeps the re-centred
//     (ds, db) per (n, c) and writes per-(n, c) coefficients of
//     dx = a*(dy - m) + (B/rstd)*((x - mean)*rstd) + K.
//  3. dgamma/dbeta: per channel, 8 threads stride over n and merge in a fixed order (no atomics).
//  4. the elementwise pass (group_norm_cuda_affine.cuh), which also writes d residual.
#include "group_norm_cuda_affine.cuh"  // and group_norm_cuda_common.cuh

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

// What the fused form's sums need to recompute z (the activation is the kernels' kAct).
template <typename T, typename PT> struct FusedInputs {
  const PT* gamma;
  const PT* beta;
  const T* residual;  // may be null
  const typename AccOf<T>::type* rstd;
};

template <typename T, typename PT, int kVec, int kAct>
__global__ void __launch_bounds__(kThreads) grad_sums_rows_kernel(
    const T* __restrict__ dy, const T* __restrict__ x,
    const typename AccOf<T>::type* __restrict__ mean, FusedInputs<T, PT> fused, int64_t N,
    int64_t C, int64_t S, int64_t G, int64_t split, int64_t chunk,
    GradSums<typename AccOf<T>::type>* __restrict__ partial) {
  using Acc = typename AccOf<T>::type;
  const int64_t item = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (item >= N * C * split) return;  // the whole warp shares `item`, so it leaves together
  const int64_t row = item / split;
  const int64_t p = item - row * split;
  const int64_t n = row / C;
  const int64_t c = row - n * C;
  const int64_t t = n * G + c / (C / G);
  const Acc mu = mean[t];
  Acc scale = Acc(0), shift = Acc(0);
  const bool residual = kAct != GN_ACT_NONE && fused.residual;
  if (kAct != GN_ACT_NONE) {
    scale = to_acc(fused.gamma[c]) * fused.rstd[t];
    shift = to_acc(fused.beta[c]);
  }
  const int64_t begin = p * chunk;
  const int64_t end = begin + chunk < S ? begin + chunk : S;
  const T* dy_row = dy + row * S;
  const T* x_row = x + row * S;
  const T* r_row = residual ? fused.residual + row * S : nullptr;
  GradSums<Acc> acc{};
#pragma unroll 4
  for (int64_t i = begin + lane * kVec; i < end; i += 32 * kVec) {
    const Pack<T, kVec> g = load_pack<T, kVec>(dy_row + i);
    const Pack<T, kVec> xv = load_pack<T, kVec>(x_row + i);
    Pack<T, kVec> rv;
    if (residual) rv = load_pack<T, kVec>(r_row + i);
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      const Acc centred = to_acc(xv.v[v]) - mu;
      const Acc dz = gn_act::grad_through<kAct>(to_acc(g.v[v]), centred, scale, shift,
                                                residual ? to_acc(rv.v[v]) : Acc(0));
      accumulate(acc, dz, centred);
    }
  }
  acc = warp_reduce(acc);
  if (lane == 0) partial[(n * split + p) * C + c] = acc;
}

// Same tiling as moments_columns_kernel: blockDim = (TX, TY), TX*TY == kThreads.
template <typename T, typename PT, int kVec, int kAct>
__global__ void __launch_bounds__(kThreads) grad_sums_columns_kernel(
    const T* __restrict__ dy, const T* __restrict__ x,
    const typename AccOf<T>::type* __restrict__ mean, FusedInputs<T, PT> fused, int64_t N,
    int64_t S, int64_t C, int64_t G, int64_t rows_per_chunk,
    GradSums<typename AccOf<T>::type>* __restrict__ partial) {
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
  const bool residual = kAct != GN_ACT_NONE && fused.residual;
  for (int64_t n = blockIdx.z; n < N; n += gridDim.z) {
    GradSums<Acc> acc[kVec];
    Acc mu[kVec], scale[kVec], shift[kVec];
#pragma unroll
    for (int v = 0; v < kVec; ++v) {
      acc[v] = GradSums<Acc>{};
      const int64_t t = n * G + (c0 + v) / D;
      mu[v] = active ? mean[t] : Acc(0);
      scale[v] = shift[v] = Acc(0);
      if (kAct != GN_ACT_NONE && active) {
        scale[v] = to_acc(fused.gamma[c0 + v]) * fused.rstd[t];
        shift[v] = to_acc(fused.beta[c0 + v]);
      }
    }
    if (active) {
      const int64_t offset = n * S * C + c0;
#pragma unroll 4
      for (int64_t s = s_begin + ty; s < s_end; s += TY) {
        const Pack<T, kVec> g = load_pack<T, kVec>(dy + offset + s * C);
        const Pack<T, kVec> xv = load_pack<T, kVec>(x + offset + s * C);
        Pack<T, kVec> rv;
        if (residual) rv = load_pack<T, kVec>(fused.residual + offset + s * C);
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const Acc centred = to_acc(xv.v[v]) - mu[v];
          const Acc dz = gn_act::grad_through<kAct>(to_acc(g.v[v]), centred, scale[v], shift[v],
                                                    residual ? to_acc(rv.v[v]) : Acc(0));
          accumulate(acc[v], dz, centred);
        }
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
    Acc* __restrict__ coef_x, Acc* __restrict__ x_rstd, Acc* __restrict__ centre,
    Acc* __restrict__ dy_centre, Acc* __restrict__ coef_k, const PT* __restrict__ beta,
    Acc* __restrict__ act_shift) {
  __shared__ GroupGradSums<Acc> scratch[32];
  __shared__ Acc group_coefs[5];  // B/rstd, K's channel-independent part, r, m, rstd*m
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
    const Acc slope = -r * (r * gds) * inv_m;  // B/rstd
    const Acc m = group_sums.v[3] * inv_m;
    group_coefs[0] = slope;
    group_coefs[1] = -r * (group_sums.v[4] * inv_m) - slope * (r * offset);  // B*(x-mean-offset)
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
    x_rstd[c] = r;
    centre[c] = mu;
    dy_centre[c] = group_coefs[3];
    coef_k[c] = (to_acc(gamma[g * D + d]) - gamma_pivot) * group_coefs[4] + group_coefs[1];
    if (act_shift) act_shift[c] = to_acc(beta[g * D + d]);  // the fused form's z
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

// Pass 1 for one activation: partial (ds, db, dev) of dz per (n, chunk, c).
template <typename T, typename PT, int kAct>
int launch_grad_sums(const T* dy, const T* x, const typename AccOf<T>::type* mean,
                     const FusedInputs<T, PT>& fused, int64_t N, int64_t C, int64_t S,
                     int64_t G, int64_t split, int channels_last,
                     GradSums<typename AccOf<T>::type>* partial, cudaStream_t stream) {
  using Acc = typename AccOf<T>::type;
  constexpr int kMax = max_vec<T>();
  const bool aligned = aligned16(dy) && aligned16(x) &&
                       (kAct == GN_ACT_NONE || aligned16(fused.residual));
  if (!channels_last) {
    const int64_t chunk = round_up(ceil_div(S, split), 8);
    const bool vec = S % kMax == 0 && aligned;
    const int64_t blocks = ceil_div(N * C * split, kWarpsPerBlock);
    if (blocks > INT32_MAX) return GN_STATUS_BAD_SHAPE;
    const unsigned grid = static_cast<unsigned>(blocks);
    if (vec)
      grad_sums_rows_kernel<T, PT, kMax, kAct><<<grid, kThreads, 0, stream>>>(dy, x, mean, fused, N, C, S, G, split, chunk, partial);
    else
      grad_sums_rows_kernel<T, PT, 1, kAct><<<grid, kThreads, 0, stream>>>(dy, x, mean, fused, N, C, S, G, split, chunk, partial);
  } else {
    const int64_t rows_per_chunk = ceil_div(S, split);
    const ColumnsLaunch shape = columns_launch(N, C, split, kMax, aligned);
    const size_t smem = static_cast<size_t>(kThreads) * shape.pack * sizeof(GradSums<Acc>);
    if (shape.pack == kMax)
      grad_sums_columns_kernel<T, PT, kMax, kAct><<<shape.grid, shape.block, smem, stream>>>(dy, x, mean, fused, N, S, C, G, rows_per_chunk, partial);
    else
      grad_sums_columns_kernel<T, PT, 1, kAct><<<shape.grid, shape.block, smem, stream>>>(dy, x, mean, fused, N, S, C, G, rows_per_chunk, partial);
  }
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
  const T* residual = static_cast<const T*>(residual_);
  const PT* gamma = static_cast<const PT*>(gamma_);
  const PT* beta = static_cast<const PT*>(beta_);
  const Acc* mean = static_cast<const Acc*>(mean_);
  const Acc* rstd = static_cast<const Acc*>(rstd_);
  const int64_t split = backward_split(N, C, S, G, channels_last);

  WorkspaceCarver carve(workspace);
  GradSums<Acc>* partial = carve.take<GradSums<Acc>>(N * split * C);
  Acc* ds_total = carve.take<Acc>(N * C);
  Acc* db_total = carve.take<Acc>(N * C);
  Acc* coef_dy = carve.take<Acc>(N * C);
  Acc* coef_x = carve.take<Acc>(N * C);
  Acc* x_rstd = carve.take<Acc>(N * C);
  Acc* centre = carve.take<Acc>(N * C);
  Acc* dy_centre = carve.take<Acc>(N * C);
  Acc* coef_k = carve.take<Acc>(N * C);
  Acc* act_shift = act != GN_ACT_NONE ? carve.take<Acc>(N * C) : nullptr;

  int status;
  if (N > 0) {
    const FusedInputs<T, PT> fused{gamma, beta, residual, rstd};
    if (act == GN_ACT_RELU)
      status = launch_grad_sums<T, PT, GN_ACT_RELU>(dy, x, mean, fused, N, C, S, G, split, channels_last, partial, stream);
    else if (act == GN_ACT_SILU)
      status = launch_grad_sums<T, PT, GN_ACT_SILU>(dy, x, mean, fused, N, C, S, G, split, channels_last, partial, stream);
    else
      status = launch_grad_sums<T, PT, GN_ACT_NONE>(dy, x, mean, fused, N, C, S, G, split, channels_last, partial, stream);
    if (status != GN_STATUS_OK) return status;

    const int threads = static_cast<int>(clamp64(round_up(C / G, 32), 32, kThreads));
    grad_coefficients_kernel<Acc, PT><<<static_cast<unsigned>(N * G), threads, 0, stream>>>(
        partial, split, gamma, mean, rstd, C, G, S, ds_total, db_total, coef_dy, coef_x, x_rstd,
        centre, dy_centre, coef_k, beta, act_shift);
    if ((status = launch_status()) != GN_STATUS_OK) return status;
  }

  if (dgamma_ || dbeta_) {
    const dim3 block(kParamColumns, kParamRows);
    param_grads_kernel<Acc, PT><<<static_cast<unsigned>(ceil_div(C, kParamColumns)), block, 0, stream>>>(
        ds_total, db_total, rstd, N, C, G, static_cast<PT*>(dgamma_), static_cast<PT*>(dbeta_));
    if ((status = launch_status()) != GN_STATUS_OK) return status;
  }
  if (dx_ == nullptr && dresidual_ == nullptr) return GN_STATUS_OK;
  ChannelCoefficients<Acc> coef{coef_dy, coef_x, centre, dy_centre, coef_k};
  coef.act_shift = act_shift;
  coef.x_rstd = x_rstd;
  return launch_per_channel_affine<T>(dy, x, residual, coef, static_cast<T*>(dx_),
                                      static_cast<T*>(dresidual_), N, C, S, channels_last, act,
                                      stream);
}

}  // namespace
}  // namespace gn_cuda

extern "C" size_t gn_cuda_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                                   int channels_last) {
  using namespace gn_cuda;
  if (check_shape(N, C, S, G) != GN_STATUS_OK || N == 0) return 0;
  const int64_t split = backward_split(N, C, S, G, channels_last);
  // Sized for the widest accumulation type (double) so one number serves every dtype.
  // 9 per-(n, c) slices: 8 coefficients and the fused form's act_shift.
  return kSliceAlign + slice_bytes(N * split * C, sizeof(GradSums<double>)) +
         9 * slice_bytes(N * C, sizeof(double));
}

extern "C" int gn_cuda_backward(int dtype, int param_dtype, const void* dy, const void* x,
                                const void* gamma, const void* beta, const void* residual,
                                const void* mean, const void* rstd, void* dx, void* dgamma,
                                void* dbeta, void* dresidual, int64_t N, int64_t C, int64_t S,
                                int64_t G, int channels_last, int act, void* workspace,
                                void* stream) {
  using namespace gn_cuda;
  if (!gn_act::valid(act)) return GN_STATUS_BAD_ARGUMENT;
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
