"""Weight Standardization (Qiao et al., 2019, arXiv:1903.10520): each output channel's weights,
axis 0 of the weight, standardized over all other axes (C_in, kH, kW) before the convolution.

With K the number of weights per output channel, m their mean and c = w - m:

- ``'qiao'`` (the default): ``w_hat = c / (std + eps)``, std the UNBIASED standard deviation
  ``sqrt(sum(c**2) / (K - 1))``, eps 1e-5 by default. This is the authors' code
  (github.com/joe-siyuan-qiao/WeightStandardization: ``weight.view(O, -1).std(dim=1) + 1e-5``,
  torch's ``std`` being unbiased) and mmcv's / mmdetection's ``ConvWS2d`` (``conv_ws_2d``:
  ``(weight - mean) / (std + eps)``, eps=1e-5), used by mmdetection's gn+ws configs.
- ``'timm'``: ``w_hat = c / sqrt(var + eps)``, var the BIASED variance ``sum(c**2) / K``, eps
  1e-6 by default (BiT passes 1e-8). This is timm's ``StdConv2d`` (timm/layers/std_conv.py:
  ``F.batch_norm(weight.reshape(1, O, -1), None, None, training=True, eps=eps)``, whose
  training-mode batch norm divides by sqrt(biased variance + eps)). Older timm releases wrote
  ``(w - mean) / (std_biased + eps)``; this follows the current one.

Defined where the sources are not: K = 1 (a 1x1 conv with one input channel) has no unbiased
std (torch gives NaN); here its std is 0, so 'qiao' gives w_hat = 0 and a zero gradient. A
channel of constant weights (std 0) likewise gives w_hat = 0 under both conventions, and its
gradient is the limit along constant-variance directions: 'timm' (dy - mean(dy)) / sqrt(eps),
'qiao' (dy - mean(dy)) / eps (the std term, 0/0 there, is taken as 0).

Backends: 'native', the compiled op ``WeightStandardization`` (operators/weight_standardization*;
one input, attrs ``eps`` and ``convention``, one output; its backward recomputes the per-channel
moments), and 'ops', stock MXNet ops (any device).
"""
import os

import mxnet as mx
import numpy as np

from . import validation
from .front import namespace_of
from .library import load_library
from .native import _may_accumulate
from .validation import WS_BACKENDS, WS_CONVENTIONS, WS_DEFAULT_EPS  # noqa: F401 (re-exported)

DEFAULT_CONVENTION = 'qiao'
DEFAULT_BACKEND = 'native'
OP_NAME = 'WeightStandardization'
# Below this (unbiased) variance the 'ops' backend takes std from TINY_VAR instead, so that the
# gradient of sqrt at 0 (infinite, times a zero) gives no NaN: std changes by <= 1e-15, far
# below any eps allowed in practice, and its gradient is 0 there, as the native op's.
TINY_VAR = 1e-30


def standardize_weight(weight, eps=None, convention=DEFAULT_CONVENTION, backend=DEFAULT_BACKEND):
    """Weight Standardization of `weight` (NDArray or Symbol, (out_channels, ...), ndim >= 2):
    per output channel over all other axes, by `convention` ('qiao' or 'timm', formulas in this
    module's docstring) with `eps` (None: 1e-5 for 'qiao', 1e-6 for 'timm'). Differentiable;
    returns w_hat of weight's shape and dtype.

    With backend 'native', a Symbol weight's shape must be known when the graph is bound (a
    variable with shape=, or its shape given to simple_bind): the compiled op cannot take it from
    the convolution (MXNetError naming the fix; a weight of unknown ndim fails inside lib_api
    with std::bad_alloc). StdConv2D and sym.std_convolution take it from the data."""
    F = namespace_of(weight, 'weight')
    return standardize(F, weight, validation.parse_ws_attrs(eps, convention),
                       validation.check_ws_backend(backend))


def standardize(F, weight, attrs, backend, name=None, like=None, grad_added=True):
    """Runs `backend` on validated `attrs` in namespace F; StdConv2D and std_convolution call
    this too. `name` names the node that computes w_hat. `like`: None, or a Symbol of weight's
    shape computed from the convolution's data (`weight_shape_like`), which the native op
    needs where weight's shape is unknown while the graph is inferred. `grad_added`: whether
    weight's gradient may be added rather than written (grad_req 'add'); False drops the
    native op's guard copy, which only an added gradient needs."""
    if F is mx.nd:
        validation.check_weight(weight.shape, weight.dtype)
    elif backend == 'native' and like is not None:
        # A lib_api op sees only its input shapes, and cannot say "unknown" back to MXNet; so
        # the weight's shape comes from the data, upstream of the op (nnvm infers in graph
        # order): this identity makes weight's and like's shapes and dtypes one.
        weight = F._internal._identity_with_attr_like_rhs(weight, like)
    if backend == 'native':
        out = _native(F, weight, attrs, None if F is mx.sym else name, grad_added)
    else:
        out = _stock_ops(F, weight, attrs, None if F is mx.sym else name)
    if F is mx.sym:
        # Neither backend infers weight's shape or dtype back from w_hat's, and a convolution's
        # weight is usually sized by the convolution (Gluon's deferred init, simple_bind with
        # the data shape alone). This identity (w_hat; a zero gradient to weight, which
        # MXNet's gradient pass drops) makes w_hat's and weight's shapes and dtypes one.
        out = F._internal._identity_with_attr_like_rhs(out, weight, name=name)
    return out


def weight_shape_like(F, data, num_filter, kernel, num_group=1, layout=None):
    """Zeros of a convolution's weight shape, computed from its data forward (no gradient):
    (num_filter, C_in / num_group, *kernel), or (num_filter, *kernel, C_in / num_group) for a
    channels-last layout ('NWC', 'NHWC', 'NDHWC')."""
    kernel = tuple(int(k) for k in kernel)
    channels_last = bool(layout) and layout.endswith('C')
    ones = (1,) * len(kernel)
    # One pixel of one sample, all channels: the only part of the data this needs.
    end = (1,) + ones + (None,) if channels_last else (1, None) + ones
    first = F.slice(data, begin=(0,) * (len(kernel) + 2), end=end)
    per_group = F.slice_axis(F.reshape(first, shape=(int(num_group), -1)),
                             axis=0, begin=0, end=1)                   # (1, C_in / groups)
    zeros = F.zeros_like(F.BlockGrad(per_group))
    if channels_last:
        column = F.reshape(zeros, shape=(1,) + ones + (-1,))
        return F.broadcast_to(column, shape=(int(num_filter),) + kernel + (0,))
    column = F.reshape(zeros, shape=(1, -1) + ones)
    return F.broadcast_to(column, shape=(int(num_filter), 0) + kernel)


def _native(F, weight, attrs, name, grad_added=True):
    load_library()
    # The op writes its gradient: where MXNet may ask to add it, an identity in front turns
    # that into a write into a temporary, which the identity's backward adds (see
    # native.native_group_norm). MXNET_EXEC_ENABLE_ADDTO=1 adds whatever the grad_req.
    if (grad_added or os.environ.get('MXNET_EXEC_ENABLE_ADDTO', '0') == '1') \
            and _may_accumulate(F, weight):
        weight = F.identity(weight)
    return getattr(F, OP_NAME)(weight, eps=repr(attrs.eps), convention=attrs.convention,
                               name=name)


def _symbol_dtype(weight):
    try:
        dtype = weight.infer_type_partial()[1][0]
    except mx.base.MXNetError:
        return None
    return None if dtype is None else np.dtype(dtype).name


def _stock_ops(F, weight, attrs, name):
    """w_hat in stock ops. float16 computes in float32 where the dtype is known (an NDArray, a
    typed Symbol); an untyped float16 Symbol computes in float16."""
    dtype = weight.dtype if F is mx.nd else _symbol_dtype(weight)
    half = dtype is not None and np.dtype(dtype) == np.float16
    work = F.cast(weight, 'float32') if half else weight
    # Statistics over every axis but 0, kept as (O, 1, ...): broadcasts against weight itself,
    # no reshape, so that nothing here needs weight's shape before inference gives it.
    mean = F.mean(work, axis=0, exclude=True, keepdims=True)
    centered = F.broadcast_sub(work, mean)
    sum_sq = F.sum(F.square(centered), axis=0, exclude=True, keepdims=True)
    # K. The sum over axis 1 first makes a 1-D Symbol weight fail at bind time.
    ones = F.sum(F.ones_like(work), axis=1, keepdims=True)
    count = F.BlockGrad(F.sum(ones, axis=0, exclude=True, keepdims=True))
    if attrs.convention == 'timm':
        scale = F.rsqrt(F.broadcast_div(sum_sq, count) + attrs.eps)
    else:
        var = F.broadcast_div(sum_sq, F.maximum(count - 1, 1))  # K = 1: std 0
        scale = F.reciprocal(F.sqrt(F.maximum(var, TINY_VAR)) + attrs.eps)
    out = F.broadcast_mul(centered, scale, name=None if half else name)
    return F.cast(out, 'float16', name=name) if half else out
