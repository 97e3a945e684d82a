"""The 'ops' backend: GroupNorm as a composition of stock MXNet ops (reshape, mean, broadcast),
for any device MXNet runs on and as a second reference beside the compiled op."""
import mxnet as mx
import numpy as np

from .validation import axis_layout, layout


def _per_channel_like(F, param, data, channels_last):
    """param (C,) tied by an elementwise add of zeros to a (C,) slice of data, so symbolic
    shape inference can size param from data (deferred init in a hybridized parent)."""
    if channels_last:
        rows = F.reshape(data, shape=(-1, 0), reverse=True)                 # (N*S, C)
    else:
        rows = F.slice_axis(F.reshape(data, shape=(0, 0, -1)), axis=2, begin=0, end=1)
    first = F.reshape(F.slice_axis(rows, axis=0, begin=0, end=1), shape=(-1,))
    return param + F.zeros_like(first)


def _unique_name(hint):
    """hint0, hint1, ... under the current name scope (Gluon's prefix included). This is what
    MXNet's generated op functions do; NameManager.current is deprecated."""
    manager = mx.name.NameManager._current
    if not hasattr(manager, 'value'):
        manager.value = mx.name.NameManager()
    return manager.value.get(None, hint)


def _bind_time_checks(F, work, ndim):
    """Zeros of shape (1,) whose inference fails at bind time where the graph built now would
    be wrong: `ndim` set (an axis such as -2 that is the channel axis of one ndim only) and
    data of another ndim. The node names say which."""
    checks = []
    if ndim is not None:
        # slice takes at most len(begin) dims, transpose exactly len(axes).
        hint = f'groupnorm_axis_wants_{ndim}d_data'
        corner = F.slice(work, begin=(0,) * ndim, end=(1,) * ndim, name=_unique_name(hint))
        checks.append(F.transpose(corner, axes=tuple(range(ndim)), name=_unique_name(hint)))
    return [F.reshape(F.zeros_like(check), shape=(1,)) for check in checks]


def stock_ops_group_norm(F, data, gamma, beta, attrs):
    """GroupNorm composed of stock MXNet ops; works on any device and any ndim.

    An NDArray's layout comes from the validator. A Symbol's ndim is unknown while its graph
    is built: the axis value alone fixes the layout (`validation.axis_layout`), and an axis
    valid for one ndim only (e.g. -2: 3-D) is checked at bind time (MXNetError from the node
    'groupnorm_axis_wants_<n>d_data').
    """
    G, eps = attrs.num_groups, attrs.eps
    if F is mx.nd:
        channels_last, ndim = layout(attrs, data.shape).channels_last, None
    else:
        channels_last, ndim = axis_layout(attrs.axis)
    # float16 NDArrays compute in float32 and round once at the end, as the native op does.
    half = F is mx.nd and data.dtype == np.float16
    work = F.cast(data, 'float32') if half else data
    if half:
        gamma, beta = F.cast(gamma, 'float32'), F.cast(beta, 'float32')
    if F is mx.sym:
        gamma = _per_channel_like(F, gamma, work, channels_last)
        beta = _per_channel_like(F, beta, work, channels_last)
    if not channels_last:
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
    var = F.mean(F.square(centered), axis=kept_axes, exclude=True, keepdims=True) + eps
    if F is mx.sym:
        for zero in _bind_time_checks(F, work, ndim):
            var = F.broadcast_add(var, zero)
    normalized = F.reshape_like(F.broadcast_mul(centered, F.rsqrt(var)), work)
    if not channels_last:
        per_channel = F.reshape(normalized, shape=(0, 0, -1))        # (N, C, S)
        out = F.broadcast_add(F.broadcast_mul(per_channel, F.reshape(gamma, shape=(1, -1, 1))),
                              F.reshape(beta, shape=(1, -1, 1)))
        out = F.reshape_like(out, work)
    else:
        out = F.broadcast_add(F.broadcast_mul(normalized, gamma), beta)
    return F.cast(out, 'float16') if half else out
