// Registers the Weight Standardization kernels with MXNet's lib_api as the operator
// `WeightStandardization`: one input (the weight, (O, ...) with ndim >= 2), one output (w_hat,
// same shape and dtype), attrs `convention` ('qiao' or 'timm', default 'qiao') and `eps` (> 0,
// default the convention's: 1e-5 / 1e-6). The backward recomputes the per-channel moments from
// the weight. Messages match gn_mxnet/operator/validation.py word for word where the check is
// the same; errors go to the library's per-thread list (group_norm_op_messages.h).
#include <cstdint>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"
#include "op_adapter.h"
#include "weight_standardization_kernels.h"

using namespace mxnet::ext;  // lib_api's registration macros and MX_SUCCESS/MX_FAIL expect it

namespace {

constexpr char kOp[] = "WeightStandardization: ";

struct Attrs {
  int convention;
  double eps;
};

bool parse_attrs(const AttrMap& attrs, Attrs* out) {
  const auto convention = attrs.find("convention");
  const std::string name = convention == attrs.end() ? "qiao" : convention->second;
  if (name == "qiao") {
    *out = Attrs{WS_CONVENTION_QIAO, 1e-5};
  } else if (name == "timm") {
    *out = Attrs{WS_CONVENTION_TIMM, 1e-6};
  } else {
    error() << kOp << "convention must be one of 'qiao', 'timm', got '" << name << "'";
    return false;
  }
  return parse_eps(kOp, attrs, false, &out->eps);
}

MXReturnValue parseAttrs(const AttrMap& attrs, int* num_in, int* num_out) {
  start_call();
  Attrs parsed;
  if (!parse_attrs(attrs, &parsed)) return MX_FAIL;
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

// An unknown input dtype (-1) is left to MXNet's inference: the fronts tie w_hat to the weight
// (weight_standardization.py), which gives the weight the dtype the convolution wants.
MXReturnValue inferType(const AttrMap& /*attrs*/, std::vector<int>* in_types,
                        std::vector<int>* out_types) {
  start_call();
  const int w = (*in_types)[0];
  if (w != -1 && !check_float_dtype(kOp, "weight", w)) return MX_FAIL;
  *out_types = {w};
  return MX_SUCCESS;
}

// A lib_api op sees its input shapes only, and has no way to report an output shape as unknown:
// a weight whose shape is unknown when the op is reached (nnvm infers in graph order) cannot
// wait for the convolution to size it. The fronts that build the convolution tie the weight to
// a shape computed from the data upstream of the op (weight_standardization.weight_shape_like).
MXReturnValue inferShape(const AttrMap& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                         std::vector<std::vector<unsigned int>>* out_shapes) {
  start_call();
  Attrs parsed;
  if (!parse_attrs(attrs, &parsed)) return MX_FAIL;
  const std::vector<unsigned int>& shape = (*in_shapes)[0];
  if (!known(shape)) {
    error() << kOp << "the shape of the weight is not known when the graph is inferred, and this "
            << "op cannot take it from the convolution: give the weight variable its shape "
            << "(mx.sym.var(name, shape=...)), or build the convolution with "
            << "gn_mxnet.sym.std_convolution or gn_mxnet.gluon.StdConv2D, which take it from "
            << "the data";
    return MX_FAIL;
  }
  if (shape.size() < 2) {
    error() << kOp << "weight must have at least 2 dimensions (out_channels, ...), got "
            << shape.size();
    return MX_FAIL;
  }
  *out_shapes = {shape};
  return MX_SUCCESS;
}

// (O, K) of a weight tensor, or false (with a message) for a shape the op refuses.
bool rows(const MXTensor& w, int64_t* O, int64_t* K) {
  if (w.shape.size() < 2) {
    error() << kOp << "weight must have at least 2 dimensions (out_channels, ...), got "
            << w.shape.size();
    return false;
  }
  *O = w.shape[0];
  *K = 1;
  for (size_t i = 1; i < w.shape.size(); ++i) *K *= w.shape[i];
  if (*O <= 0 || *K <= 0) {
    error() << kOp << "weight must be non-empty: its shape has a zero-size dimension";
    return false;
  }
  return true;
}

// forward: inputs [w], outputs [w_hat]; backward: inputs [dy, w, w_hat], outputs [dw], written.
template <bool kGpu, bool kBackward>
MXReturnValue run(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                  std::vector<MXTensor>* outputs, const OpResource& res) {
  start_call();
  Attrs a;
  int64_t O, K;
  const MXTensor& w = (*inputs)[kBackward ? 1 : 0];
  const void* dy = kBackward ? (*inputs)[0].data_ptr : nullptr;
  void* out = (*outputs)[0].data_ptr;
  if (!parse_attrs(attrs, &a) || !rows(w, &O, &K)) return MX_FAIL;
  int status;
  if constexpr (kGpu) {
    void* stream = res.get_cuda_stream();
    status = kBackward ? ws_cuda_backward(w.dtype, dy, w.data_ptr, out, O, K, a.convention,
                                          a.eps, stream)
                       : ws_cuda_forward(w.dtype, w.data_ptr, out, O, K, a.convention, a.eps,
                                         stream);
  } else {
    (void)res;
    status = kBackward ? ws_cpu_backward(w.dtype, dy, w.data_ptr, out, O, K, a.convention, a.eps)
                       : ws_cpu_forward(w.dtype, w.data_ptr, out, O, K, a.convention, a.eps);
  }
  return report(kOp, status, kGpu);
}

}  // namespace

REGISTER_OP(WeightStandardization)
    .setParseAttrs(parseAttrs)
    .setInferType(inferType)
    .setInferShape(inferShape)
    .setForward((run<false, false>), "cpu")
    .setBackward((run<false, true>), "cpu")
#ifdef GN_MXNET_WITH_CUDA
    .setForward((run<true, false>), "gpu")
    .setBackward((run<true, true>), "gpu")
#endif
    ;
