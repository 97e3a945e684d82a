"""`group_norm`: one entry for NDArray and Symbol, three interchangeable backends."""
import os

import mxnet as mx
import numpy as np

from . import attrs as _attrs
from ._library import load_library

BACKENDS = ('native', 'custom', 'ops')


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


def _namespace(data):
    if isinstance(data, mx.nd.NDArray):
        return mx.nd
    if isinstance(data, mx.sym.Symbol):
        return mx.sym
    raise TypeError(f"data must be an mxnet NDArray or Symbol, got {type(data).__name__}")


def group_norm(data, gamma, beta, num_groups, eps=1e-5, axis=1, backend='native'):
    """Group Normalization (Wu & He, 2018) with per-channel gamma/beta of shape (C,).

    `data` is an NDArray or a Symbol with the channel axis at `axis` (1 or -1) and 2 to 5
    dimensions; returns the normalized output only.
    """
    F = _namespace(data)
    return _group_norm(F, data, gamma, beta, _attrs.parse_attrs(num_groups, eps, axis),
                       check_backend(backend))


def _group_norm(F, data, gamma, beta, attrs, backend):
    if F is mx.nd:
        for name, value in (('gamma', gamma), ('beta', beta)):
            if not isinstance(value, mx.nd.NDArray):
                raise TypeError(f"{name} must be an NDArray like data, "
                                f"got {type(value).__name__}")
        _attrs.layout(attrs, data.shape, gamma.shape, beta.shape)
        _attrs.check_dtype(data.dtype)
        _attrs.check_param_dtype(data.dtype, gamma.dtype, 'gamma')
        _attrs.check_param_dtype(data.dtype, beta.dtype, 'beta')
    if backend == 'native':
        return _native(F, data, gamma, beta, attrs)
    if backend == 'custom':
        from .custom_op import OP_TYPE  # registers the CustomOp on first use
        # Both ways: the data it reads, and the gradient its backward reads (which the next
        # layer's MKLDNN backward may leave blocked).
        out = F.Custom(_in_default_layout(F, data), gamma, beta, op_type=OP_TYPE,
                       num_groups=attrs.num_groups, eps=repr(attrs.eps), axis=attrs.axis)
        return _in_default_layout(F, out)
    return _stock_ops(F, data, gamma, beta, attrs)


def _in_default_layout(F, data):
    """data in MXNet's default row-major layout, for the CustomOp. A Conv2D output may sit in
    MKLDNN's blocked layout, which MXNet 1.9 hands a CustomOp as if it were plain NCHW (wrong
    results that vary from call to call). expand_dims and squeeze have no MKLDNN kernels, so
    MXNet reorders their input to the default layout, imperatively and in graphs alike, and
    autograd records them like any op. (identity does not do it in graphs: its MKLDNN copy
    keeps the blocked layout.)"""
    return F.squeeze(F.expand_dims(data, axis=0), axis=0)


def _may_accumulate(F, value):
    """Whether MXNet may ask for value's gradient to be added rather than written: a leaf
    NDArray with a gradient buffer, a Symbol variable, or anything under
    MXNET_EXEC_ENABLE_ADDTO=1 (whose executor adds into shared gradient buffers)."""
    if os.environ.get('MXNET_EXEC_ENABLE_ADDTO', '0') == '1':
        return True
    if F is mx.nd:
        return value.grad is not None
    return value.get_children() is None


def _native(F, data, gamma, beta, attrs):
    load_library()
    # lib_api does not tell an op whether to write or add its gradients, so the library
    # always writes. Where an 'add' is possible, an identity in front of the input turns it
    # into a write into a temporary, which the identity's backward then adds as asked.
    gamma, beta, data = (F.identity(v) if _may_accumulate(F, v) else v
                         for v in (gamma, beta, data))
    outputs = F.GroupNormalization(data, gamma, beta, num_groups=attrs.num_groups,
                                   eps=repr(attrs.eps), axis=attrs.axis)
    # The op also returns mean and rstd (lib_api cannot hide outputs); users get y only.
    return outputs[0]


def _per_channel_like(F, param, data, channels_last):
    """param (C,) tied by an elementwise add of zeros to a (C,) slice of data, so symbolic
    shape inference can size param from data (deferred init in a hybridized parent)."""
    if channels_last:
        rows = F.reshape(data, shape=(-1, 0), reverse=True)                 # (N*S, C)
    else:
        rows = F.slice_axis(F.reshape(data, shape=(0, 0, -1)), axis=2, begin=0, end=1)
    first = F.reshape(F.slice_axis(rows, axis=0, begin=0, end=1), shape=(-1,))
    return param + F.zeros_like(first)


def _stock_ops(F, data, gamma, beta, attrs):
    """Reference composition of stock MXNet ops; works on any device and any ndim."""
    G, eps = attrs.num_groups, attrs.eps
    # float16 NDArrays compute in float32 and round once at the end, as the native op does.
    half = F is mx.nd and data.dtype == np.float16
    work = F.cast(data, 'float32') if half else data
    if half:
        gamma, beta = F.cast(gamma, 'float32'), F.cast(beta, 'float32')
    if F is mx.sym:
        gamma = _per_channel_like(F, gamma, work, attrs.axis != 1)
        beta = _per_channel_like(F, beta, work, attrs.axis != 1)
    if attrs.axis == 1:
        grouped = F.reshape(work, shape=(0, -4, G, -1, -2))        # (N, G, D, *S)
        kept_axes = (0, 1)
    else:
        rows = F.reshape(work, shape=(-1, 0), reverse=True)          # (N*S, C)
        rows = F.reshape(rows, shape=(0, -4, G, -1))                 # (N*S, G, D)
        grouped = F.reshape_like(rows, work, lhs_begin=0, lhs_end=1,
                                 rhs_begin=0, rhs_end=-1)            # (N, *S, G, D)
        kept_axes = (0, -2)
    mean = F.mean(grouped, axis=kept_axes, exclude=True, keepdims=True)
    centered = F.broadcast_sub(grouped, mean)
    # mean is rounded to float32; deviations from it are exact for a near-constant group, so
    # their mean is that rounding. Left in, it would reach y times rstd ~ 1/sqrt(eps).
    rounding = F.mean(centered, axis=kept_axes, exclude=True, keepdims=True)
    centered = F.broadcast_sub(centered, rounding)
    var = F.mean(F.square(centered), axis=kept_axes, exclude=True, keepdims=True)
    normalized = F.reshape_like(F.broadcast_mul(centered, F.rsqrt(var + eps)), work)
    if attrs.axis == 1:
        per_channel = F.reshape(normalized, shape=(0, 0, -1))        # (N, C, S)
        out = F.broadcast_add(F.broadcast_mul(per_channel, F.reshape(gamma, shape=(1, -1, 1))),
                              F.reshape(beta, shape=(1, -1, 1)))
        out = F.reshape_like(out, work)
    else:
        out = F.broadcast_add(F.broadcast_mul(normalized, gamma), beta)
    return F.cast(out, 'float16') if half else out
