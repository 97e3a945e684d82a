// What the lib_api adapters (group_norm_op.cc, weight_standardization_op.cc) share: the dtype
// codes and their names, the test for a known shape, the eps attribute's parsing and the
// message for a kernel call's status. Each adapter passes its own "<Op>: " prefix.
#ifndef GN_MXNET_OP_ADAPTER_H_
#define GN_MXNET_OP_ADAPTER_H_

#include <cmath>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "group_norm_kernels.h"
#include "group_norm_op_messages.h"
#include "mxnet/lib_api.h"

// MXNet's dtype codes reach the kernels unchanged.
static_assert(int{GN_DTYPE_FLOAT32} == int{mxnet::ext::kFloat32} &&
                  int{GN_DTYPE_FLOAT64} == int{mxnet::ext::kFloat64} &&
                  int{GN_DTYPE_FLOAT16} == int{mxnet::ext::kFloat16},
              "group_norm_kernels.h's GN_DTYPE_* codes must be MXNet's MXDType codes");

namespace {

using AttrMap = std::unordered_map<std::string, std::string>;

inline const char* dtype_name(int dtype) {
  switch (dtype) {
    case GN_DTYPE_FLOAT32: return "float32";
    case GN_DTYPE_FLOAT64: return "float64";
    case GN_DTYPE_FLOAT16: return "float16";
    default: return "a non-float type";
  }
}

// The dtypes the kernels take, for an input named `what`; false with a message otherwise.
inline bool check_float_dtype(const char* op, const char* what, int dtype) {
  if (dtype == GN_DTYPE_FLOAT32 || dtype == GN_DTYPE_FLOAT64 || dtype == GN_DTYPE_FLOAT16) {
    return true;
  }
  error() << op << what << " dtype must be one of float16, float32, float64, got "
          << dtype_name(dtype);
  return false;
}

// MXNet hands an unknown dimension to lib_api as (unsigned)-1 (or 0 in legacy shape mode).
inline bool known(const std::vector<unsigned int>& shape) {
  if (shape.empty()) return false;
  for (const unsigned int d : shape) {
    if (d == 0u || d == static_cast<unsigned int>(-1)) return false;
  }
  return true;
}

// The eps attribute, when given, into *eps (left at the op's default otherwise), then its
// range: finite and > 0, or >= 0 where zero_allowed (GroupNorm's eps may be 0; WS divides by it
// where the std is 0).
inline bool parse_eps(const char* op, const AttrMap& attrs, bool zero_allowed, double* eps) {
  const auto text = attrs.find("eps");
  if (text != attrs.end()) {
    char* end = nullptr;
    *eps = std::strtod(text->second.c_str(), &end);
    if (text->second.empty() || *end != '\0') {
      error() << op << "eps must be a real number, got '" << text->second << "'";
      return false;
    }
  }
  if (!std::isfinite(*eps) || *eps < 0 || (*eps == 0 && !zero_allowed)) {
    error() << op << "eps must be finite and " << (zero_allowed ? ">= 0" : "> 0") << ", got "
            << *eps;
    return false;
  }
  return true;
}

// A kernel call's outcome; a failed CUDA call also says which CUDA error it was.
inline mxnet::ext::MXReturnValue report(const char* op, int status, bool gpu) {
  if (status == GN_STATUS_OK) return mxnet::ext::MX_SUCCESS;
  Message message = error();
  message << op << gn_status_string(status);
#ifdef GN_MXNET_WITH_CUDA
  if (gpu && status == GN_STATUS_DEVICE_ERROR) message << ": " << gn_cuda_last_error();
#else
  (void)gpu;
#endif
  return mxnet::ext::MX_FAIL;
}

}  // namespace

#endif  // GN_MXNET_OP_ADAPTER_H_
