// The C ABI of the CPU kernels: checks shapes, dispatches on (data, param) dtype.
#include <type_traits>

#include "group_norm_cpu.h"
#include "group_norm_kernels.h"

namespace {

constexpr int kFloat32 = 0, kFloat64 = 1, kFloat16 = 2;

bool valid_shape(int64_t N, int64_t C, int64_t S, int64_t G) {
  return N >= 0 && C > 0 && S >= 0 && G > 0 && C % G == 0;
}

// Calls fn with null pointers of the (data, param) types, or returns GN_STATUS_BAD_DTYPE.
template <typename Fn>
int dispatch(int dtype, int param_dtype, Fn&& fn) {
  if (dtype == kFloat32 && param_dtype == kFloat32) return fn(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  if (dtype == kFloat64 && param_dtype == kFloat64) return fn(static_cast<double*>(nullptr), static_cast<double*>(nullptr));
  if (dtype == kFloat16 && param_dtype == kFloat16) return fn(static_cast<gn::Half*>(nullptr), static_cast<gn::Half*>(nullptr));
  if (dtype == kFloat16 && param_dtype == kFloat32) return fn(static_cast<gn::Half*>(nullptr), static_cast<float*>(nullptr));
  return GN_STATUS_BAD_DTYPE;
}

}  // namespace

extern "C" {

const char* gn_status_string(int status) {
  switch (status) {
    case GN_STATUS_OK: return "ok";
    case GN_STATUS_BAD_DTYPE: return "unsupported dtype combination (data float32/float64/float16; gamma/beta as data, or float32 with float16 data)";
    case GN_STATUS_BAD_SHAPE: return "invalid shape: need N >= 0, C > 0, S >= 0, num_groups > 0 dividing C";
    case GN_STATUS_DEVICE_ERROR: return "device error (no usable CUDA device or a failed launch)";
    default: return "unknown status";
  }
}

size_t gn_cpu_forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                      int channels_last) {
  if (!valid_shape(N, C, S, G)) return 0;
  return gn::forward_workspace_bytes(N, C, S, G, channels_last);
}

size_t gn_cpu_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                       int channels_last) {
  if (!valid_shape(N, C, S, G)) return 0;
  return gn::backward_workspace_bytes(N, C, S, G, channels_last);
}

int gn_cpu_forward(int dtype, int param_dtype, const void* x, const void* gamma,
                   const void* beta, void* y, void* mean, void* rstd, int64_t N, int64_t C,
                   int64_t S, int64_t G, int channels_last, double eps, void* workspace) {
  if (!valid_shape(N, C, S, G)) return GN_STATUS_BAD_SHAPE;
  if (N == 0 || S == 0) return GN_STATUS_OK;  // empty input: nothing to write
  return dispatch(dtype, param_dtype, [&](auto* t_tag, auto* p_tag) {
    using T = std::remove_pointer_t<decltype(t_tag)>;
    using P = std::remove_pointer_t<decltype(p_tag)>;
    using A = gn::AccOf<T>;
    gn::forward<T, P>(static_cast<const T*>(x), static_cast<const P*>(gamma),
                      static_cast<const P*>(beta), static_cast<T*>(y), static_cast<A*>(mean),
                      static_cast<A*>(rstd), N, C, S, G, channels_last, eps, workspace);
    return static_cast<int>(GN_STATUS_OK);
  });
}

int gn_cpu_backward(int dtype, int param_dtype, const void* dy, const void* x,
                    const void* gamma, const void* mean, const void* rstd, void* dx,
                    void* dgamma, void* dbeta, int64_t N, int64_t C, int64_t S, int64_t G,
                    int channels_last, void* workspace) {
  if (!valid_shape(N, C, S, G)) return GN_STATUS_BAD_SHAPE;
  return dispatch(dtype, param_dtype, [&](auto* t_tag, auto* p_tag) {
    using T = std::remove_pointer_t<decltype(t_tag)>;
    using P = std::remove_pointer_t<decltype(p_tag)>;
    using A = gn::AccOf<T>;
    if (N == 0 || S == 0) {  // empty input: gradients of gamma/beta are zero
      for (int64_t c = 0; c < C; ++c) {
        if (dgamma) static_cast<P*>(dgamma)[c] = gn::Element<P>::store(0);
        if (dbeta) static_cast<P*>(dbeta)[c] = gn::Element<P>::store(0);
      }
      return static_cast<int>(GN_STATUS_OK);
    }
    gn::backward<T, P>(static_cast<const T*>(dy), static_cast<const T*>(x),
                       static_cast<const P*>(gamma), static_cast<const A*>(mean),
                       static_cast<const A*>(rstd), static_cast<T*>(dx),
                       static_cast<P*>(dgamma), static_cast<P*>(dbeta), N, C, S, G,
                       channels_last, workspace);
    return static_cast<int>(GN_STATUS_OK);
  });
}

}  // extern "C"
