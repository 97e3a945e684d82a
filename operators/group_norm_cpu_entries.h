// The entry points of each instruction set's build of the CPU kernels (see cpu_common.h);
// group_norm_cpu.cc picks one at run time.
#ifndef GN_MXNET_GROUP_NORM_CPU_ENTRIES_H_
#define GN_MXNET_GROUP_NORM_CPU_ENTRIES_H_

#include <cstddef>
#include <cstdint>

#define GN_DECLARE_CPU_ENTRIES(isa)                                                          \
  namespace gn {                                                                             \
  namespace isa {                                                                            \
  size_t forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,                 \
                                 int channels_last);                                         \
  size_t backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,                \
                                  int channels_last);                                        \
  int forward_entry(int dtype, int param_dtype, const void* x, const void* gamma,            \
                    const void* beta, const void* residual, void* y, void* mean, void* rstd, \
                    int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int act,  \
                    double eps, void* workspace);                                            \
  int backward_entry(int dtype, int param_dtype, const void* dy, const void* x,              \
                     const void* gamma, const void* beta, const void* residual,              \
                     const void* mean, const void* rstd, void* dx, void* dgamma,             \
                     void* dbeta, void* dresidual, int64_t N, int64_t C, int64_t S,          \
                     int64_t G, int channels_last, int act, void* workspace);                \
  }                                                                                          \
  }

GN_DECLARE_CPU_ENTRIES(generic)
GN_DECLARE_CPU_ENTRIES(avx2)
#undef GN_DECLARE_CPU_ENTRIES

#endif  // GN_MXNET_GROUP_NORM_CPU_ENTRIES_H_
