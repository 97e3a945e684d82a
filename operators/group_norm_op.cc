// Registers the kernels with MXNet's lib_api as the operator `GroupNormalization`
// (never `GroupNorm`: that name belongs to MXNet's built-in op). Inputs: data, gamma, beta, and
// residual when has_residual=1. Outputs: y = act(GN(data) [+ residual]) with act from act_type,
// mean (N, G), rstd (N, G); the Python front returns y only.
// Messages match gn_mxnet/operator/validation.py word for word where the check is the same.
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"
#include "op_adapter.h"

using namespace mxnet::ext;  // lib_api's registration macros and MX_SUCCESS/MX_FAIL expect it

namespace {

constexpr char kOp[] = "GroupNormalization: ";

struct Attrs {
  int64_t num_groups;
  double eps;
  int64_t axis;
  int act;            // GN_ACT_*
  bool has_residual;  // a fourth input, added before the activation
};

// act_type's values, named as gn_mxnet/operator/validation.py names them.
bool parse_act(const AttrMap& attrs, Attrs* out) {
  static const std::unordered_map<std::string, int> codes{
      {"none", GN_ACT_NONE}, {"relu", GN_ACT_RELU}, {"silu", GN_ACT_SILU}};
  const auto act = attrs.find("act_type");
  const auto code = act == attrs.end() ? codes.find("none") : codes.find(act->second);
  if (code == codes.end()) {
    error() << kOp << "act_type must be one of 'none', 'relu', 'silu', got '" << act->second
            << "'";
    return false;
  }
  out->act = code->second;
  const auto residual = attrs.find("has_residual");
  const std::string flag = residual == attrs.end() ? "0" : residual->second;
  if (flag != "0" && flag != "1") {
    error() << kOp << "has_residual must be 0 or 1, got '" << flag << "'";
    return false;
  }
  out->has_residual = flag == "1";
  return true;
}

bool parse_integer(const std::string& text, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || errno != 0 || *end != '\0') return false;
  *out = value;
  return true;
}

bool parse_attrs(const AttrMap& attrs, Attrs* out) {
  *out = Attrs{0, 1e-5, 1, GN_ACT_NONE, false};
  const auto groups = attrs.find("num_groups");
  if (groups == attrs.end()) {
    error() << kOp << "num_groups is required";
    return false;
  }
  if (!parse_integer(groups->second, &out->num_groups)) {
    error() << kOp << "num_groups must be an integer, got '" << groups->second << "'";
    return false;
  }
  if (out->num_groups <= 0) {
    error() << kOp << "num_groups must be >= 1, got " << out->num_groups;
    return false;
  }
  if (!parse_eps(kOp, attrs, true, &out->eps)) return false;
  const auto axis = attrs.find("axis");
  if (axis != attrs.end() && !parse_integer(axis->second, &out->axis)) {
    error() << kOp << "axis must be an integer, got '" << axis->second << "'";
    return false;
  }
  return parse_act(attrs, out);
}

struct Layout {
  int64_t N, C, S;
  int channels_last;
};

template <typename Dim>
bool resolve_layout(const Attrs& attrs, const std::vector<Dim>& shape, Layout* out) {
  const int64_t ndim = static_cast<int64_t>(shape.size());
  if (ndim < 2 || ndim > 5) {
    error() << kOp << "data must have 2 to 5 dimensions (N, C, ...), got " << ndim;
    return false;
  }
  if (attrs.axis < -ndim || attrs.axis >= ndim) {
    error() << kOp << "axis " << attrs.axis << " is out of range for data with " << ndim
            << " dimensions";
    return false;
  }
  const int64_t axis = (attrs.axis + ndim) % ndim;
  if (axis != 1 && axis != ndim - 1) {
    error() << kOp << "axis must be the channel axis: 1 (channels-first) or -1 "
            << "(channels-last), got " << attrs.axis << " for data with " << ndim
            << " dimensions";
    return false;
  }
  for (const Dim d : shape) {
    if (static_cast<int64_t>(d) <= 0) {
      error() << kOp << "data must be non-empty: its shape has a zero-size or unknown "
              << "dimension (MXNet 1.9 reads 0 as an unknown dimension)";
      return false;
    }
  }
  out->N = static_cast<int64_t>(shape[0]);
  out->C = static_cast<int64_t>(shape[axis]);
  out->S = 1;
  for (int64_t i = 1; i < ndim; ++i) {
    if (i != axis) out->S *= static_cast<int64_t>(shape[i]);
  }
  out->channels_last = axis != 1;
  if (out->C % attrs.num_groups != 0) {
    error() << kOp << "num_groups (" << attrs.num_groups
            << ") must divide the number of channels (" << out->C << ")";
    return false;
  }
  return true;
}

MXReturnValue parseAttrs(const AttrMap& attrs, int* num_in, int* num_out) {
  start_call();
  Attrs parsed;
  if (!parse_attrs(attrs, &parsed)) return MX_FAIL;
  *num_in = parsed.has_residual ? 4 : 3;
  *num_out = 3;
  return MX_SUCCESS;
}

MXReturnValue inferType(const AttrMap& /*attrs*/, std::vector<int>* in_types,
                        std::vector<int>* out_types) {
  start_call();
  const int data = (*in_types)[0];
  if (!check_float_dtype(kOp, "data", data)) return MX_FAIL;
  const char* names[] = {"gamma", "beta"};
  for (int i = 1; i <= 2; ++i) {
    int& param = (*in_types)[i];
    if (param == -1) param = data;
    if (param != data && !(data == GN_DTYPE_FLOAT16 && param == GN_DTYPE_FLOAT32)) {
      error() << kOp << names[i - 1] << " dtype must match data (" << dtype_name(data)
              << (data == GN_DTYPE_FLOAT16 ? ") or be float32" : ")") << ", got "
              << dtype_name(param);
      return MX_FAIL;
    }
  }
  if ((*in_types)[1] != (*in_types)[2]) {
    error() << kOp << "gamma and beta must have the same dtype";
    return MX_FAIL;
  }
  if (in_types->size() == 4) {  // has_residual: its dtype is data's
    int& residual = (*in_types)[3];
    if (residual == -1) residual = data;
    if (residual != data) {
      error() << kOp << "residual dtype must match data (" << dtype_name(data) << "), got "
              << dtype_name(residual);
      return MX_FAIL;
    }
  }
  const int accumulation = data == GN_DTYPE_FLOAT64 ? GN_DTYPE_FLOAT64 : GN_DTYPE_FLOAT32;
  *out_types = {data, accumulation, accumulation};
  return MX_SUCCESS;
}

std::string shape_text(const std::vector<unsigned int>& shape) {
  std::string text;
  for (size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + (shape.size() == 1 ? "," : "");
}

MXReturnValue inferShape(const AttrMap& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                         std::vector<std::vector<unsigned int>>* out_shapes) {
  start_call();
  Attrs parsed;
  Layout layout;
  if (!parse_attrs(attrs, &parsed)) return MX_FAIL;
  if (!known((*in_shapes)[0])) {
    error() << kOp << "the shape of data is not known (it has an unknown or zero-size "
            << "dimension); GroupNormalization needs it to infer gamma and beta";
    return MX_FAIL;
  }
  if (!resolve_layout(parsed, (*in_shapes)[0], &layout)) return MX_FAIL;
  const std::vector<unsigned int> per_channel{static_cast<unsigned int>(layout.C)};
  const char* names[] = {"gamma", "beta"};
  for (int i = 1; i <= 2; ++i) {
    std::vector<unsigned int>& shape = (*in_shapes)[i];
    if (!known(shape)) shape = per_channel;  // unknown: deferred initialization
    if (shape != per_channel) {
      error() << kOp << names[i - 1] << " must have shape (" << layout.C
              << ",) (one per channel), got a shape of " << shape.size() << " dims"
              << (shape.size() == 1 ? " (" + std::to_string(shape[0]) + ",)" : "");
      return MX_FAIL;
    }
  }
  if (parsed.has_residual) {
    std::vector<unsigned int>& shape = (*in_shapes)[3];
    if (!known(shape)) shape = (*in_shapes)[0];
    if (shape != (*in_shapes)[0]) {
      error() << kOp << "residual must have data's shape (" << shape_text((*in_shapes)[0])
              << "), got (" << shape_text(shape) << ")";
      return MX_FAIL;
    }
  }
  const std::vector<unsigned int> stats{static_cast<unsigned int>(layout.N),
                                        static_cast<unsigned int>(parsed.num_groups)};
  *out_shapes = {(*in_shapes)[0], stats, stats};
  return MX_SUCCESS;
}

bool tensor_layout(const AttrMap& attrs, const MXTensor& data, Attrs* parsed, Layout* layout) {
  return parse_attrs(attrs, parsed) && resolve_layout(*parsed, data.shape, layout);
}

// Workspace through MXNet's allocator, which takes an int. A CPU workspace beyond that is the
// library's own, in `owned`, freed when the call returns (the CPU kernels are synchronous):
// refusing it would fail the op after MXNet queued it, and MXNet 1.9 hands such a failure to
// the next ops that share its temp space, which then return unwritten memory without an
// error (docs/design.md §3). On the GPU it is refused, as device memory is MXNet's to give.
bool workspace(const OpResource& res, size_t bytes, bool gpu, void** out,
               std::unique_ptr<char[]>* owned) {
  *out = nullptr;
  if (bytes == 0) return true;
  if (bytes <= static_cast<size_t>(INT_MAX)) {
    *out = gpu ? res.alloc_gpu(static_cast<int>(bytes)) : res.alloc_cpu(static_cast<int>(bytes));
  } else if (gpu) {
    error() << kOp << "workspace of " << bytes << " bytes exceeds lib_api's 2 GiB limit";
    return false;
  } else {
    owned->reset(new (std::nothrow) char[bytes]);
    *out = owned->get();
  }
  if (*out == nullptr) error() << kOp << "could not allocate " << bytes << " bytes";
  return *out != nullptr;
}

template <bool kGpu>
MXReturnValue forward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  start_call();
  Attrs a;
  Layout l;
  if (!tensor_layout(attrs, (*inputs)[0], &a, &l)) return MX_FAIL;
  const MXTensor &x = (*inputs)[0], &gamma = (*inputs)[1], &beta = (*inputs)[2];
  const void* residual = a.has_residual ? (*inputs)[3].data_ptr : nullptr;
  void* ws;
  std::unique_ptr<char[]> owned;
#ifdef GN_MXNET_WITH_CUDA
  if (kGpu) {
    if (!workspace(res, gn_cuda_forward_workspace_bytes(l.N, l.C, l.S, a.num_groups, l.channels_last), true, &ws, &owned)) return MX_FAIL;
    return report(kOp, gn_cuda_forward(x.dtype, gamma.dtype, x.data_ptr, gamma.data_ptr, beta.data_ptr,
                                       residual, (*outputs)[0].data_ptr, (*outputs)[1].data_ptr,
                                       (*outputs)[2].data_ptr, l.N, l.C, l.S, a.num_groups,
                                       l.channels_last, a.act, a.eps, ws, res.get_cuda_stream()), true);
  }
#endif
  if (!workspace(res, gn_cpu_forward_workspace_bytes(l.N, l.C, l.S, a.num_groups, l.channels_last), false, &ws, &owned)) return MX_FAIL;
  return report(kOp, gn_cpu_forward(x.dtype, gamma.dtype, x.data_ptr, gamma.data_ptr, beta.data_ptr,
                                    residual, (*outputs)[0].data_ptr, (*outputs)[1].data_ptr,
                                    (*outputs)[2].data_ptr, l.N, l.C, l.S, a.num_groups,
                                    l.channels_last, a.act, a.eps, ws),
                     false);
}

// inputs: [dy, dmean, drstd, data, gamma, beta, (residual,) y, mean, rstd]; outputs: [ddata,
// dgamma, dbeta(, dresidual)]. The mean/rstd outputs are statistics, not part of the function
// users differentiate, so their incoming gradients are ignored. The fused form's pre-activation
// is recomputed from the inputs (group_norm_kernels.h), not kept as a hidden output.
template <bool kGpu>
MXReturnValue backward(const AttrMap& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource& res) {
  start_call();
  Attrs a;
  Layout l;
  if (!tensor_layout(attrs, (*inputs)[3], &a, &l)) return MX_FAIL;
  const size_t r = a.has_residual ? 1 : 0;  // inputs after beta shift by the residual
  const MXTensor &dy = (*inputs)[0], &x = (*inputs)[3], &gamma = (*inputs)[4];
  const MXTensor &beta = (*inputs)[5], &mean = (*inputs)[7 + r], &rstd = (*inputs)[8 + r];
  const void* residual = r ? (*inputs)[6].data_ptr : nullptr;
  void* dresidual = r ? (*outputs)[3].data_ptr : nullptr;
  void* ws;
  std::unique_ptr<char[]> owned;
#ifdef GN_MXNET_WITH_CUDA
  if (kGpu) {
    if (!workspace(res, gn_cuda_backward_workspace_bytes(l.N, l.C, l.S, a.num_groups, l.channels_last), true, &ws, &owned)) return MX_FAIL;
    return report(kOp, gn_cuda_backward(x.dtype, gamma.dtype, dy.data_ptr, x.data_ptr, gamma.data_ptr,
                                        beta.data_ptr, residual, mean.data_ptr, rstd.data_ptr,
                                        (*outputs)[0].data_ptr, (*outputs)[1].data_ptr,
                                        (*outputs)[2].data_ptr, dresidual, l.N, l.C, l.S,
                                        a.num_groups, l.channels_last, a.act, ws,
                                        res.get_cuda_stream()),
                       true);
  }
#endif
  if (!workspace(res, gn_cpu_backward_workspace_bytes(l.N, l.C, l.S, a.num_groups, l.channels_last), false, &ws, &owned)) return MX_FAIL;
  return report(kOp, gn_cpu_backward(x.dtype, gamma.dtype, dy.data_ptr, x.data_ptr, gamma.data_ptr,
                                     beta.data_ptr, residual, mean.data_ptr, rstd.data_ptr,
                                     (*outputs)[0].data_ptr, (*outputs)[1].data_ptr,
                                     (*outputs)[2].data_ptr, dresidual, l.N, l.C, l.S, a.num_groups,
                                     l.channels_last, a.act, ws),
                     false);
}

}  // namespace

REGISTER_OP(GroupNormalization)
    .setParseAttrs(parseAttrs)
    .setInferType(inferType)
    .setInferShape(inferShape)
    .setForward(forward<false>, "cpu")
    .setBackward(backward<false>, "cpu")
#ifdef GN_MXNET_WITH_CUDA
    .setForward(forward<true>, "gpu")
    .setBackward(backward<true>, "gpu")
#endif
    ;

MXReturnValue initialize(int version) {
  start_call();
  if (version >= 10700) return MX_SUCCESS;
  error() << kOp << "needs MXNet >= 1.7 (lib_api version 11), found " << version;
  return MX_FAIL;
}

// What MXNet reads after each call: this thread's messages (see thread_messages above).
MX_INT_RET _msgSize() { return static_cast<int>(thread_messages.size()); }

MX_VOID_RET _msgGet(int idx, const char** msg) {
  const bool known = idx >= 0 && static_cast<size_t>(idx) < thread_messages.size();
  *msg = known ? thread_messages[idx].c_str() : "";
}
