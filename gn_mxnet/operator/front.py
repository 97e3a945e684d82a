"""`group_norm`: one entry for NDArray and Symbol, three interchangeable backends."""
import mxnet as mx

from . import validation
from .native import native_group_norm
from .stock_ops import stock_ops_group_norm


def namespace_of(value, what='data'):
    """mx.nd or mx.sym, whichever `value` (the argument called `what`) belongs to."""
    if isinstance(value, mx.nd.NDArray):
        return mx.nd
    if isinstance(value, mx.sym.Symbol):
        return mx.sym
    raise TypeError(f"{what} must be an mxnet NDArray or Symbol, got {type(value).__name__}")


def group_norm(data, gamma, beta, num_groups, eps=1e-5, axis=1, backend='native',
               act_type='none', residual=None):
    """Group Normalization (Wu & He, 2018) with per-channel gamma/beta of shape (C,).

    The fused form y = act(GN(data) + residual): `act_type` 'none', 'relu' or 'silu', and
    `residual` (data's shape and dtype) or None; the native op adds and activates in its
    normalize pass.

    `data` is an NDArray or a Symbol with the channel axis at `axis` and 2 to 5 dimensions;
    returns the normalized output only. `axis` is 1 (channels-first) or -1 (channels-last),
    or another spelling of one of them for the data's ndim (for 4-D: -3 or 3). A Symbol's
    ndim is unknown until bind time: such a spelling names one ndim only (-2 is 3-D, 3 is
    4-D), and data of any other ndim is refused with MXNetError when the graph is bound.
    """
    F = namespace_of(data)
    return normalize(F, data, gamma, beta,
                     validation.parse_attrs(num_groups, eps, axis, act_type),
                     validation.check_backend(backend), residual=residual)


def normalize(F, data, gamma, beta, attrs, backend, name=None, residual=None):
    """Runs `backend` on validated `attrs` in namespace F (mx.nd or mx.sym); the Gluon layer's
    hybrid_forward and the Symbol API call this too, so every front checks and dispatches alike.
    `name` names the Symbol node that computes y (the Symbol API's layer name)."""
    if F is mx.nd:
        given = (('gamma', gamma), ('beta', beta)) + (
            (('residual', residual),) if residual is not None else ())
        for what, value in given:
            if not isinstance(value, mx.nd.NDArray):
                raise TypeError(f"{what} must be an NDArray like data, "
                                f"got {type(value).__name__}")
        if residual is not None:
            validation.check_residual(data.shape, data.dtype, residual.shape, residual.dtype)
        validation.layout(attrs, data.shape, gamma.shape, beta.shape)
        validation.check_dtype(data.dtype)
        validation.check_param_dtype(data.dtype, gamma.dtype, 'gamma')
        validation.check_param_dtype(data.dtype, beta.dtype, 'beta')
    else:
        validation.axis_layout(attrs.axis)  # refuses now the axes no ndim allows
    if backend == 'native':
        return native_group_norm(F, data, gamma, beta, attrs, name, residual)
    if backend == 'custom':
        from .custom_op import custom_group_norm  # registers the CustomOp on first use
        return custom_group_norm(F, data, gamma, beta, attrs, name, residual)
    return stock_ops_group_norm(F, data, gamma, beta, attrs, name, residual)
