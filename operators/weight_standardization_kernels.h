// Weight Standardization kernels: raw pointers and shapes only, nothing of MXNet.
//
// A weight is viewed as (O, K): O output channels (axis 0), K = C_in*kH*kW weights each,
// contiguous. Per row, with m the mean and c = w - m:
//   WS_CONVENTION_QIAO: w_hat = c / (std + eps), std = sqrt(sum c^2 / (K - 1)), 0 when K = 1
//   WS_CONVENTION_TIMM: w_hat = c / sqrt(sum c^2 / K + eps)
// Moments and gradients are computed in double whatever the dtype (GN_DTYPE_* codes of
// group_norm_kernels.h: float32, float64, float16 as IEEE binary16); results are rounded once.
// The backward recomputes the moments from w (no saved statistics: a lib_api op cannot hide
// an output). Where std is 0 (K = 1 or a constant row) the qiao std term of the gradient, 0/0
// there, is taken as 0 (gn_mxnet/operator/weight_standardization.py documents it).
// Entries return GN_STATUS_OK or another GN_STATUS_* code (gn_status_string names it).
#ifndef GN_MXNET_WEIGHT_STANDARDIZATION_KERNELS_H_
#define GN_MXNET_WEIGHT_STANDARDIZATION_KERNELS_H_

#include <stdint.h>

#include "group_norm_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

// The convention attribute's values ('qiao', 'timm'), in gn_mxnet/operator/validation.py's
// WS_CONVENTIONS order.
enum {
  WS_CONVENTION_QIAO = 0,
  WS_CONVENTION_TIMM = 1
};

int ws_cpu_forward(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                   int convention, double eps);
// dw is written (not accumulated).
int ws_cpu_backward(int dtype, const void* dy, const void* w, void* dw, int64_t O, int64_t K,
                    int convention, double eps);

// CUDA twins (operators/weight_standardization_cuda.cu when built): device pointers, `stream`
// a cudaStream_t; launches are asynchronous on it.
int ws_cuda_forward(int dtype, const void* w, void* w_hat, int64_t O, int64_t K,
                    int convention, double eps, void* stream);
int ws_cuda_backward(int dtype, const void* dy, const void* w, void* dw, int64_t O, int64_t K,
                     int convention, double eps, void* stream);

#ifdef __cplusplus
}
#endif

#endif  // GN_MXNET_WEIGHT_STANDARDIZATION_KERNELS_H_
