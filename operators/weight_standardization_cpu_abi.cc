// The C ABI of the Weight Standardization CPU kernels: checks arguments, then runs the build
// of the kernels the GroupNorm ABI runs (cpu_isa.h: AVX2 + FMA + F16C where the CPU has them
// and GN_MXNET_CPU_ISA does not say generic).
#include <cmath>

#include "cpu_isa.h"
#include "weight_standardization_cpu.h"
#include "weight_standardization_kernels.h"

namespace {

bool valid(int64_t O, int64_t K, int convention, double eps) {
  return O > 0 && K > 0 && (convention == WS_CONVENTION_QIAO || convention == WS_CONVENTION_TIMM) &&
         std::isfinite(eps) && eps > 0.0;
}

}  // namespace

extern "C" {

int ws_cpu_forward(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                   int convention, double eps) {
  if (!valid(O, K, convention, eps)) return GN_STATUS_BAD_ARGUMENT;
  return GN_CPU_DISPATCH(ws_forward_entry, dtype, w, w_hat, O, K, convention, eps);
}

int ws_cpu_backward(int dtype, const void* dy, const void* w, void* dw, int64_t O, int64_t K,
                    int convention, double eps) {
  if (!valid(O, K, convention, eps)) return GN_STATUS_BAD_ARGUMENT;
  return GN_CPU_DISPATCH(ws_backward_entry, dtype, dy, w, dw, O, K, convention, eps);
}

}  // extern "C"
