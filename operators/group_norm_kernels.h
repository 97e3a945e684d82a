// GroupNorm kernels: raw pointers and shapes only, nothing of MXNet.
//
// Tensor view: x is (N, C, S) when channels_last == 0 and (N, S, C) when channels_last == 1,
// S = product of spatial dims (1 for a 2-D input). C splits into G contiguous groups of C/G.
// gamma/beta are per channel (C,). mean/rstd are (N, G) in the accumulation type:
// float for float32/float16 data, double for float64 data.
//
// Fused form: y = act(GN(x) + residual), act a GN_ACT_* code, residual of x's shape, layout and
// dtype, or null for none. The add and the activation happen in the normalize pass.
//
// dtype and param_dtype are GN_DTYPE_* codes (float16 is IEEE binary16). param_dtype is the dtype
// of gamma/beta/dgamma/dbeta: equal to dtype, or float32 with float16 data.
//
// Every entry returns 0 on success, a nonzero GN_STATUS_* code otherwise; gn_status_string names it.
// The workspace is caller-owned scratch of at least *_workspace_bytes() bytes (may be null when 0).
#ifndef GN_MXNET_GROUP_NORM_KERNELS_H_
#define GN_MXNET_GROUP_NORM_KERNELS_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// MXNet's MXDType codes (lib_api.h), so that the operator passes MXNet's dtype through
// unchanged (group_norm_op.cc checks they agree). Python reads them from this header
// (gn_mxnet/operator/build.py).
enum {
  GN_DTYPE_FLOAT32 = 0,
  GN_DTYPE_FLOAT64 = 1,
  GN_DTYPE_FLOAT16 = 2
};

enum {
  GN_STATUS_OK = 0,
  GN_STATUS_BAD_DTYPE = 1,
  GN_STATUS_BAD_SHAPE = 2,
  GN_STATUS_DEVICE_ERROR = 3,
  GN_STATUS_BAD_ARGUMENT = 4
};

// The activation of the fused form; Python reads these too (the act_type attribute's values).
enum {
  GN_ACT_NONE = 0,
  GN_ACT_RELU = 1,
  GN_ACT_SILU = 2
};

const char* gn_status_string(int status);

// Which build of the CPU kernels runs: "avx2" (AVX2 + FMA + F16C, chosen when the CPU has them) or
// "generic". GN_MXNET_CPU_ISA=generic in the environment forces "generic".
const char* gn_cpu_isa(void);

size_t gn_cpu_forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                      int channels_last);
int gn_cpu_forward(int dtype, int param_dtype, const void* x, const void* gamma,
                   const void* beta, const void* residual, void* y, void* mean, void* rstd,
                   int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int act,
                   double eps, void* workspace);

size_t gn_cpu_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                       int channels_last);
// dx, dgamma, dbeta, dresidual are written (not accumulated); any of them may be null to skip
// it. The fused backward recomputes z = GN(x) + residual from x, mean, rstd, gamma, beta and
// residual (no hidden output) and takes dz = dy * act'(z) (= d residual) for dy inside the
// passes that read dy (CPU and CUDA alike: no dz pass or buffer). An unknown act:
// GN_STATUS_BAD_ARGUMENT. beta and residual are read only when act != GN_ACT_NONE (beta may
// then not be null).
int gn_cpu_backward(int dtype, int param_dtype, const void* dy, const void* x,
                    const void* gamma, const void* beta, const void* residual,
                    const void* mean, const void* rstd, void* dx, void* dgamma, void* dbeta,
                    void* dresidual, int64_t N, int64_t C, int64_t S, int64_t G,
                    int channels_last, int act, void* workspace);

// CUDA twins (operators/group_norm_cuda.cu): device pointers, `stream` is a cudaStream_t
// (null = default stream), workspace is device memory. Launches are asynchronous on `stream`.
size_t gn_cuda_forward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                       int channels_last);
int gn_cuda_forward(int dtype, int param_dtype, const void* x, const void* gamma,
                    const void* beta, const void* residual, void* y, void* mean, void* rstd,
                    int64_t N, int64_t C, int64_t S, int64_t G, int channels_last, int act,
                    double eps, void* workspace, void* stream);
size_t gn_cuda_backward_workspace_bytes(int64_t N, int64_t C, int64_t S, int64_t G,
                                        int channels_last);
int gn_cuda_backward(int dtype, int param_dtype, const void* dy, const void* x,
                     const void* gamma, const void* beta, const void* residual,
                     const void* mean, const void* rstd, void* dx, void* dgamma, void* dbeta,
                     void* dresidual, int64_t N, int64_t C, int64_t S, int64_t G,
                     int channels_last, int act, void* workspace, void* stream);
// The CUDA error behind the last GN_STATUS_DEVICE_ERROR a gn_cuda_* call returned on this
// thread, as "cudaErrorName: description" (cudaGetErrorName, cudaGetErrorString); "" before
// any. Like errno, meaningful right after that status only.
const char* gn_cuda_last_error(void);

#ifdef __cplusplus
}
#endif

#endif  // GN_MXNET_GROUP_NORM_KERNELS_H_
