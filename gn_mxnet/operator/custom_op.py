"""The Python CustomOp backend: NumPy math on the host, registered once with MXNet.

It is slow (host round trip) but independent of the C++ library, so it serves as a second
implementation to check the native op against, and runs wherever MXNet's CustomOp does.
"""
import mxnet as mx
import numpy as np

from .validation import (check_dtype, check_param_dtype, check_residual, layout, parse_attrs,
                         parse_has_residual)

OP_TYPE = 'gn_mxnet_group_norm'


def _grouped(x, num_groups, channels_last):
    """(N, G, D, S) view in channels-first order."""
    if channels_last:
        x = np.moveaxis(x, -1, 1)
    return x.reshape(x.shape[0], num_groups, x.shape[1] // num_groups, -1)


def _ungrouped(grouped, like_shape, channels_last):
    if channels_last:
        moved = (like_shape[0], like_shape[-1]) + tuple(like_shape[1:-1])
        return np.moveaxis(grouped.reshape(moved), 1, -1)
    return grouped.reshape(like_shape)


def _grouped_statistics(x, attrs):
    """x as (N, G, D, S) in float64, with mean and rstd of shape (N, G).

    float64 whatever x's dtype: a float32 mean's rounding, times rstd ~ 1/sqrt(eps) for a
    near-constant group, would show in y at 1e-5, and this backend's job is to be exact.
    Each group's moments are of x / s, s the power of two above its max |x| (at least 2;
    exact), so the squares stay in range at any finite |x| (|x| ~ 1e155 would overflow), and
    rstd = 1 / hypot(std, sqrt(eps)) never forms var = std².
    """
    channels_last = layout(attrs, x.shape).channels_last
    xg = _grouped(x.astype(np.float64), attrs.num_groups, channels_last)
    peak = np.abs(xg).max(axis=(2, 3)) if xg.size else np.ones(xg.shape[:2])
    s = np.ldexp(1.0, np.frexp(np.maximum(peak, 1.0))[1])  # inf/NaN peak: 1, as unscaled
    xs = xg / s[:, :, None, None]
    mean = xs.mean(axis=(2, 3))
    mean += (xs - mean[:, :, None, None]).mean(axis=(2, 3))  # its rounding (0 if constant)
    var = np.square(xs - mean[:, :, None, None]).mean(axis=(2, 3))
    return xg, mean * s, 1.0 / np.hypot(s * np.sqrt(var), np.sqrt(attrs.eps)), channels_last


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# act_type -> (act(z), act'(z)) in float64; relu's slope at 0 is 0, as MXNet's relu takes it.
_ACTIVATIONS = {
    'none': (lambda z: z, np.ones_like),
    'relu': (lambda z: np.where(z < 0, 0.0, z), lambda z: (z > 0).astype(z.dtype)),
    'silu': (lambda z: z * _sigmoid(z), lambda z: _sigmoid(z) * (1.0 + z * (1.0 - _sigmoid(z)))),
}


def _pre_activation(x, gamma, beta, attrs, residual):
    """z = GN(x) + residual in float64, x's layout; mean and rstd (N, G)."""
    xg, mean, rstd, channels_last = _grouped_statistics(x, attrs)
    g = gamma.astype(xg.dtype).reshape(1, attrs.num_groups, -1, 1)
    b = beta.astype(xg.dtype).reshape(1, attrs.num_groups, -1, 1)
    z = _ungrouped((xg - mean[:, :, None, None]) * rstd[:, :, None, None] * g + b, x.shape,
                   channels_last)
    return (z if residual is None else z + residual.astype(np.float64)), mean, rstd


def forward_numpy(x, gamma, beta, attrs, residual=None):
    """Returns y = act(GN(x) + residual) (x's dtype), mean and rstd of shape (N, G) in
    float64."""
    z, mean, rstd = _pre_activation(x, gamma, beta, attrs, residual)
    return _ACTIVATIONS[attrs.act_type][0](z).astype(x.dtype), mean, rstd


def fused_backward_numpy(dy, x, gamma, beta, attrs, residual=None):
    """Returns dx, dgamma, dbeta and d residual (= dz, x's dtype) of the fused form."""
    z, _, _ = _pre_activation(x, gamma, beta, attrs, residual)
    dz = dy.astype(np.float64) * _ACTIVATIONS[attrs.act_type][1](z)
    return backward_numpy(dz, x, gamma, attrs) + (dz.astype(x.dtype),)


def backward_numpy(dy, x, gamma, attrs):
    """Returns dx, dgamma, dbeta, using the per-channel sums form of docs/design.md §2."""
    xg, mean, rstd, channels_last = _grouped_statistics(x, attrs)
    acc = xg.dtype
    G = attrs.num_groups
    dyg = _grouped(dy.astype(acc), G, channels_last)
    centered = xg - mean[:, :, None, None]
    ds = (dyg * centered).sum(axis=3)                        # (N, G, D)
    db = dyg.sum(axis=3)
    g = gamma.astype(acc).reshape(G, -1)
    count = xg.shape[2] * xg.shape[3]
    gds = (ds * g).sum(axis=2)                               # (N, G)
    gdb = (db * g).sum(axis=2)
    # The x term -rstd³·gds/count·centered, formed as a slope ~rstd times x_hat ~1: rstd³
    # alone underflows where |x| is huge (1e-900 at |x| ~ 1e300).
    x_slope = -rstd * (rstd * gds) / count
    # gamma·dy less its group mean before scaling by rstd: formed apart, the two terms round
    # differently and leave ~rstd·|gamma·dy|·1e-16 where they cancel (dx of a one-element
    # group is exactly 0).
    centered_dy = g[None, :, :, None] * dyg - (gdb / count)[:, :, None, None]
    dxg = (rstd[:, :, None, None] * centered_dy
           + x_slope[:, :, None, None] * (centered * rstd[:, :, None, None]))
    dgamma = (ds * rstd[:, :, None]).sum(axis=0).reshape(-1)
    dbeta = db.sum(axis=0).reshape(-1)
    return (_ungrouped(dxg, x.shape, channels_last).astype(x.dtype),
            dgamma.astype(gamma.dtype), dbeta.astype(gamma.dtype))


class _GroupNormOp(mx.operator.CustomOp):
    def __init__(self, attrs):
        super().__init__()
        self.attrs = attrs

    def forward(self, is_train, req, in_data, out_data, aux):
        x, gamma, beta, *residual = (a.asnumpy() for a in in_data)
        y, _, _ = forward_numpy(x, gamma, beta, self.attrs, *residual)
        self.assign(out_data[0], req[0], mx.nd.array(y, dtype=y.dtype, ctx=x_ctx(in_data)))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        x, gamma, beta, *residual = (a.asnumpy() for a in in_data)
        grads = fused_backward_numpy(out_grad[0].asnumpy(), x, gamma, beta, self.attrs,
                                     *residual)[:len(in_grad)]
        for i, grad in enumerate(grads):
            self.assign(in_grad[i], req[i], mx.nd.array(grad, dtype=grad.dtype,
                                                        ctx=x_ctx(in_data)))


def x_ctx(in_data):
    return in_data[0].context


@mx.operator.register(OP_TYPE)
class _GroupNormProp(mx.operator.CustomOpProp):
    def __init__(self, num_groups, eps='1e-05', axis='1', act_type='none', has_residual='0'):
        super().__init__(need_top_grad=True)
        self.attrs = parse_attrs(int(num_groups), float(eps), int(axis), act_type)
        self.has_residual = parse_has_residual(has_residual)

    def list_arguments(self):
        return ['data', 'gamma', 'beta'] + (['residual'] if self.has_residual else [])

    def list_outputs(self):
        return ['output']

    def infer_shape(self, in_shape):
        data_shape = tuple(in_shape[0])
        # MXNet marks unknown dims with 0 or -1; data not known yet: it will ask again.
        if not data_shape or min(data_shape) <= 0:
            return in_shape, [data_shape], []
        known = [tuple(s) if len(s) and min(s) > 0 else None for s in in_shape[1:]]
        channels = layout(self.attrs, data_shape, *known[:2]).channels
        if self.has_residual and known[2] is not None:
            check_residual(data_shape, np.float64, known[2], np.float64)
        residual = [data_shape] if self.has_residual else []
        return [data_shape, (channels,), (channels,)] + residual, [data_shape], []

    def infer_type(self, in_type):
        # MXNet's CustomOp wants numpy scalar types (np.float32), not dtype objects.
        data_type = np.dtype(check_dtype(in_type[0])).type
        param_types = []
        for name, given in zip(('gamma', 'beta'), in_type[1:3]):
            if given is None or given == -1:
                param_types.append(data_type)
            else:
                check_param_dtype(data_type, given, name)
                param_types.append(np.dtype(given).type)
        if self.has_residual:
            if in_type[3] not in (None, -1):
                check_residual((), data_type, (), in_type[3])
            param_types.append(data_type)
        return [data_type] + param_types, [data_type], []

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return [out_grad[0]] + list(in_data)

    def create_operator(self, ctx, in_shapes, in_dtypes):
        return _GroupNormOp(self.attrs)


def custom_group_norm(F, data, gamma, beta, attrs, name=None, residual=None):
    """The CustomOp applied through MXNet's Custom op, y only."""
    # Both ways: the data it reads, and the gradient its backward reads (which the next
    # layer's MKLDNN backward may leave blocked).
    extra = () if residual is None else (_in_default_layout(F, residual),)
    out = F.Custom(_in_default_layout(F, data), gamma, beta, *extra, op_type=OP_TYPE,
                   num_groups=attrs.num_groups, eps=repr(attrs.eps), axis=attrs.axis,
                   act_type=attrs.act_type, has_residual=int(residual is not None),
                   name=name)
    return _in_default_layout(F, out)


def _in_default_layout(F, data):
    """data in MXNet's default row-major layout, for the CustomOp. A Conv2D output may sit in
    MKLDNN's blocked layout, which MXNet 1.9 hands a CustomOp as if it were plain NCHW (wrong
    results that vary from call to call). expand_dims and squeeze have no MKLDNN kernels, so
    MXNet reorders their input to the default layout, imperatively and in graphs alike, and
    autograd records them like any op. (identity does not do it in graphs: its MKLDNN copy
    keeps the blocked layout.)"""
    return F.squeeze(F.expand_dims(data, axis=0), axis=0)
