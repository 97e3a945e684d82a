// The entry points of each instruction set's build of the Weight Standardization CPU kernels
// (weight_standardization_cpu.cc, compiled like the GroupNorm kernels once per ISA: see
// cpu_common.h); weight_standardization_cpu_abi.cc picks one at run time.
#ifndef GN_MXNET_WEIGHT_STANDARDIZATION_CPU_H_
#define GN_MXNET_WEIGHT_STANDARDIZATION_CPU_H_

#include <cstdint>

#define WS_DECLARE_CPU_ENTRIES(isa)                                                       \
  namespace gn {                                                                          \
  namespace isa {                                                                         \
  int ws_forward_entry(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,       \
                       int convention, double eps);                                       \
  int ws_backward_entry(int dtype, const void* dy, const void* w, void* dw, int64_t O,    \
                        int64_t K, int convention, double eps);                           \
  }                                                                                       \
  }

WS_DECLARE_CPU_ENTRIES(generic)
WS_DECLARE_CPU_ENTRIES(avx2)
#undef WS_DECLARE_CPU_ENTRIES

#endif  // GN_MXNET_WEIGHT_STANDARDIZATION_CPU_H_
