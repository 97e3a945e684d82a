"""The 'ops' backend: GroupNorm as a composition of stock MXNet ops (reshape, mean, broadcast),
for any device MXNet runs on and as a second reference beside the compiled op."""
import mxnet as mx
import numpy as np

from .validation import axis_layout, check_param_dtype, layout


def _per_channel_like(F, param, data, channels_last):
    """param (C,) tied by an elementwise add of zeros to a (C,) slice of data, so symbolic
    shape inference can size param from data (deferred init in a hybridized parent), and
    type inference gives param data's dtype."""
    if channels_last:
        rows = F.reshape(data, shape=(-1, 0), reverse=True)                 # (N*S, C)
    else:
        rows = F.slice_axis(F.reshape(data, shape=(0, 0, -1)), axis=2, begin=0, end=1)
    first = F.reshape(F.slice_axis(rows, axis=0, begin=0, end=1), shape=(-1,))
    return param + F.zeros_like(first)


def _symbol_dtypes(data, gamma, beta):
    """The dtypes type inference can see while the graph is built (a typed variable, a Cast
    upstream, Gluon's typed parameters): data's, else the one typed gamma/beta imply; and
    gamma's and beta's. None where it cannot tell."""
    try:
        types = mx.sym.Group([data, gamma, beta]).infer_type_partial()[1]
    except mx.base.MXNetError:  # e.g. a CustomOp upstream that cannot infer without types
        types = [None] * 3
    data_dtype, *param_dtypes = [None if t is None else np.dtype(t).name for t in types]
    if data_dtype is not None:
        for what, dtype in zip(('gamma', 'beta'), param_dtypes):
            if dtype is not None:
                check_param_dtype(data_dtype, dtype, what)
        return data_dtype, param_dtypes
    # float16 and float64 gamma/beta need data of their dtype. float32 ones are taken for
    # float32 data: their tie to data then refuses float16 data at bind time.
    implied = [d for d in ('float16', 'float64', 'float32') if d in param_dtypes]
    return (implied[0] if implied else None), param_dtypes


def _symbol_param(F, param, param_dtype, data, work, half, channels_last):
    """gamma or beta sized from data and typed like it (the validator's rule; an untyped one
    gets data's dtype), then cast to work's float32 if half. float32 ones beside float16 data
    tie to the float32 work instead."""
    if half and param_dtype == 'float32':
        return _per_channel_like(F, param, work, channels_last)
    param = _per_channel_like(F, param, data, channels_last)
    return F.cast(param, 'float32') if half else param


def _unique_name(hint):
    """hint0, hint1, ... under the current name scope (Gluon's prefix included). This is what
    MXNet's generated op functions do; NameManager.current is deprecated."""
    manager = mx.name.NameManager._current
    if not hasattr(manager, 'value'):
        manager.value = mx.name.NameManager()
    return manager.value.get(None, hint)


def _bind_time_checks(F, work, ndim, dtype_seen):
    """Zeros of shape (1,) whose inference fails at bind time where the graph built now would
    be wrong: `ndim` set (an axis such as -2 that is the channel axis of one ndim only) and
    data of another ndim; or no dtype seen and data float16 (this graph would take float16
    statistics). The node names say which."""
    checks = []
    if ndim is not None:
        # slice takes at most len(begin) dims, transpose exactly len(axes).
        hint = f'groupnorm_axis_wants_{ndim}d_data'
        corner = F.slice(work, begin=(0,) * ndim, end=(1,) * ndim, name=_unique_name(hint))
        checks.append(F.transpose(corner, axes=tuple(range(ndim)), name=_unique_name(hint)))
    if not dtype_seen:
        first = F.slice_axis(F.reshape(work, shape=(-1,)), axis=0, begin=0, end=1)
        # linalg_det refuses float16 at type inference and takes float32 and float64.
        checks.append(F.linalg.det(F.zeros_like(F.reshape(first, shape=(1, 1))),
                                   name=_unique_name('groupnorm_ops_float16_needs_typed_data')))
    return [F.reshape(F.zeros_like(check), shape=(1,)) for check in checks]


def _fused_tail(F, out, residual, act_type, name):
    """act(out + residual) in stock ops, the last node named `name`."""
    if residual is not None:
        out = F.elemwise_add(out, residual, name=name if act_type == 'none' else None)
    if act_type == 'relu':
        return F.relu(out, name=name)
    if act_type == 'silu':
        return F.elemwise_mul(out, F.sigmoid(out), name=name)
    return out


def stock_ops_group_norm(F, data, gamma, beta, attrs, name=None, residual=None):
    """GroupNorm composed of stock MXNet ops; works on any device and any ndim.

    An NDArray's layout and dtype come from the validator and the array. A Symbol's are
    unknown while its graph is built: the axis value alone fixes the layout
    (`validation.axis_layout`; an axis valid for one ndim only is checked at bind time), and
    type inference is asked for the dtype (`_symbol_dtypes`). float16 data computes in
    float32 either way; float16 data that nothing typed is refused at bind time (MXNetError
    from the node 'groupnorm_ops_float16_needs_typed_data'): type the data variable
    (`mx.sym.var('data', dtype='float16')`), cast it, or give float16 gamma/beta.
    `name` names the node that returns y. The fused form adds `residual` and applies
    attrs.act_type after the affine step, in float32 for float16 data.
    """
    fused = residual is not None or attrs.act_type != 'none'
    final_name, name = name, (None if fused else name)
    G, eps = attrs.num_groups, attrs.eps
    if F is mx.nd:
        channels_last, ndim = layout(attrs, data.shape).channels_last, None
        dtype = np.dtype(data.dtype).name
    else:
        channels_last, ndim = axis_layout(attrs.axis)
        dtype, param_dtypes = _symbol_dtypes(data, gamma, beta)
    # float16 computes in float32 and rounds once at the end, as the native op does.
    half = dtype == 'float16'
    work = F.cast(data, 'float32') if half else data
    if F is mx.sym:
        gamma, beta = (_symbol_param(F, param, param_dtype, data, work, half, channels_last)
                       for param, param_dtype in zip((gamma, beta), param_dtypes))
    elif half:
        gamma, beta = F.cast(gamma, 'float32'), F.cast(beta, 'float32')
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
    # Squares of deviations overflow where |x| is huge (float32 ~1e19, float64 ~1e155), so
    # they are taken of centered / s, s ~ mean |deviation| + 1, and var with eps / s²: the same
    # normalized values for any s (so no gradient flows through it), and a rounding of
    # centered / s is relative to the deviation itself (unlike one of x / s).
    s = F.BlockGrad(F.mean(F.abs(centered), axis=kept_axes, exclude=True, keepdims=True) + 1)
    centered = F.broadcast_div(centered, s)
    var = F.mean(F.square(centered), axis=kept_axes, exclude=True, keepdims=True)
    var = var + F.reciprocal(F.square(s)) * eps  # s² may overflow: eps / s² is then 0, rightly
    if F is mx.sym:
        for zero in _bind_time_checks(F, work, ndim, dtype is not None):
            var = F.broadcast_add(var, zero)
    normalized = F.reshape_like(F.broadcast_mul(centered, F.rsqrt(var)), work)
    if not channels_last:
        per_channel = F.reshape(normalized, shape=(0, 0, -1))        # (N, C, S)
        out = F.broadcast_add(F.broadcast_mul(per_channel, F.reshape(gamma, shape=(1, -1, 1))),
                              F.reshape(beta, shape=(1, -1, 1)))
        out = F.reshape_like(out, work, name=None if half else name)
    else:
        out = F.broadcast_add(F.broadcast_mul(normalized, gamma), beta,
                              name=None if half else name)
    if fused:
        if half and residual is not None:
            residual = F.cast(residual, 'float32')
        out = _fused_tail(F, out, residual, attrs.act_type, None if half else final_name)
        name = final_name
    return F.cast(out, 'float16', name=name) if half else out
