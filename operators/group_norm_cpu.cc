// The C ABI of the CPU kernels: checks shapes, then runs the build of the kernels for the
// best instruction set this CPU has (AVX2 + FMA + F16C, else generic x86-64 / the host's
// default).
#include <cstdlib>
#include <cstring>

#include "cpu_isa.h"
#include "group_norm_activation.h"
#include "group_norm_cpu_entries.h"
#include "group_norm_kernels.h"

namespace {

bool valid_shape(int64_t N, int64_t C, int64_t S, int64_t G) {
  return N >= 0 && C > 0 && S >= 0 && G > 0 && C % G == 0;
}

}  // namespace

namespace gn {

// GN_MXNET_CPU_ISA=generic forces the generic build (to compare or test both).
bool use_avx2() {
#ifdef GN_MXNET_WITH_AVX2
  static const bool avx2 = [] {
    const char* forced = std::getenv("GN_MXNET_CPU_ISA");
    if (forced && std::strcmp(forced, "generic") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
  }();
  return avx2;
#else
  return false;
#endif
}

}  // namespace gn

extern "C" {

const char* gn_status_string(int status) {
  switch (status) {
    case GN_STATUS_OK: return "ok";
    case GN_STATUS_BAD_DTYPE: return "unsupported dtype combination (data float32/float64/float16; gamma/beta as data, or float32 with float16 data)";
    case GN_STATUS_BAD_SHAPE: return "invalid shape: need N >= 0, C > 0, S >= 0, num_groups > 0 dividing C";
    case GN_STATUS_DEVICE_ERROR: return "device error (no usable CUDA device or a failed launch)";
    case GN_STATUS_BAD_ARGUMENT: return "invalid argument: act must be a GN_ACT_* code, and a fused backward (act other than none) needs dx or dresidual";
    default: return "unknown status";
  }
}

const char* gn_cpu_isa() { return gn::use_avx2() ? "avx2" : "generic"; }

size_t gn_cpu_forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                      int channels_last) {
  if (!valid_shape(N, C, S, G)) return 0;
  return gn::generic::forward_workspace_bytes(N, C, S, G, channels_last);
}

size_t gn_cpu_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                       int channels_last) {
  if (!valid_shape(N, C, S, G)) return 0;
  return gn::generic::backward_workspace_bytes(N, C, S, G, channels_last);
}

int gn_cpu_forward(int dtype, int param_dtype, const void* x, const void* gamma,
                   const void* beta, const void* residual, void* y, void* mean, void* rstd,
                   int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int act,
                   double eps, void* workspace) {
  if (!valid_shape(N, C, S, G)) return GN_STATUS_BAD_SHAPE;
  if (!gn_act::valid(act)) return GN_STATUS_BAD_ARGUMENT;
  return GN_CPU_DISPATCH(forward_entry, dtype, param_dtype, x, gamma, beta, residual, y, mean,
                         rstd, N, C, S, G, channels_last, act, eps, workspace);
}

int gn_cpu_backward(int dtype, int param_dtype, const void* dy, const void* x,
                    const void* gamma, const void* beta, const void* residual,
                    const void* mean, const void* rstd, void* dx, void* dgamma, void* dbeta,
                    void* dresidual, int64_t N, int64_t C, int64_t S, int64_t G,
                    int channels_last, int act, void* workspace) {
  if (!valid_shape(N, C, S, G)) return GN_STATUS_BAD_SHAPE;
  if (!gn_act::valid(act)) return GN_STATUS_BAD_ARGUMENT;
  return GN_CPU_DISPATCH(backward_entry, dtype, param_dtype, dy, x, gamma, beta, residual,
                         mean, rstd, dx, dgamma, dbeta, dresidual, N, C, S, G, channels_last,
                         act, workspace);
}

}  // extern "C"
