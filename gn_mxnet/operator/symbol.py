"""`GroupNorm` and `std_convolution`: the Symbol API in MXNet's own convention (`mx.sym.BatchNorm(data=x, name='bn1')`).

Inputs are keywords, missing gamma/beta become the variables `<name>_gamma` (init ones) and
`<name>_beta` (init zeros), the node that computes y is named `name`, and one output (y) comes
back, whatever the backend. The compiled op itself cannot do this: lib_api ops have no input
names and expose all their outputs (docs/design.md §3).
"""
import mxnet as mx
from mxnet.name import NameManager

from . import validation
from . import weight_standardization as ws
from .front import normalize

NAME_HINT = 'groupnorm'


class _NamedAfter(NameManager):
    """Names the nodes one GroupNorm is built from: the op node keeps the resolved layer name as
    given (the active manager has already applied its prefix: a second pass would add it twice),
    helper nodes (identity, expand_dims, stock ops) get automatic names under '<name>_', so they
    never collide with another layer's."""

    def __init__(self, name):
        super().__init__()
        self._prefix = name + '_'

    def get(self, name, hint):
        return name if name else self._prefix + super().get(None, hint)


def _active_name_manager():
    # The lookup MXNet's generated Symbol functions make (NameManager.current is deprecated).
    if not hasattr(NameManager._current, 'value'):
        NameManager._current.value = NameManager()
    return NameManager._current.value


def GroupNorm(data=None, gamma=None, beta=None, num_groups=32, eps=1e-5, axis=1, name=None,
              backend='native', act_type='none', residual=None):
    """Group Normalization of Symbol `data` over `num_groups` groups of the channel `axis`.

    gamma/beta: Symbols of shape (C,), or None for new variables `<name>_gamma`/`<name>_beta`
    (their shape is inferred from data). name: the layer's name; None takes a unique one
    (groupnorm0, groupnorm1, ...) from MXNet's NameManager, whose prefix (mx.name.Prefix) applies
    as it does to MXNet's own ops. act_type ('none', 'relu', 'silu') and residual (a Symbol of
    data's shape, or None) give the fused form y = act(GN(data) + residual). Returns y only.
    """
    if not isinstance(data, mx.sym.Symbol):
        raise TypeError(f"data must be an mxnet Symbol (for NDArrays use gn_mxnet.group_norm), "
                        f"got {type(data).__name__}")
    for what, value in (('gamma', gamma), ('beta', beta), ('residual', residual)):
        if value is not None and not isinstance(value, mx.sym.Symbol):
            raise TypeError(f"{what} must be a Symbol or None, got {type(value).__name__}")
    attrs = validation.parse_attrs(num_groups, eps, axis, act_type)
    backend = validation.check_backend(backend)
    name = _active_name_manager().get(name, NAME_HINT)
    if gamma is None:
        gamma = mx.sym.Variable(name + '_gamma', init=mx.init.One())
    if beta is None:
        beta = mx.sym.Variable(name + '_beta', init=mx.init.Zero())
    with _NamedAfter(name):
        return normalize(mx.sym, data, gamma, beta, attrs, backend, name=name,
                         residual=residual)


def std_convolution(data=None, name=None, ws_eps=None, ws_convention=ws.DEFAULT_CONVENTION,
                    ws_backend=ws.DEFAULT_BACKEND, weight=None, **kwargs):
    """mx.sym.Convolution of `data` with its weight standardized per output channel (Weight
    Standardization; gn_mxnet.standardize_weight gives the formulas). kwargs are
    mx.sym.Convolution's (kernel, num_filter, stride, pad, no_bias, ...); `weight` a Symbol or
    None for the variable `<name>_weight`; the bias (unless no_bias) is `<name>_bias`, as
    mx.sym.Convolution names them. name: None takes a unique one (convolution0, ...) as
    MXNet's own ops do. Returns the convolution's output, the node named `name`."""
    if not isinstance(data, mx.sym.Symbol):
        raise TypeError(f"data must be an mxnet Symbol (for NDArrays use "
                        f"gn_mxnet.standardize_weight and mx.nd.Convolution), "
                        f"got {type(data).__name__}")
    if weight is not None and not isinstance(weight, mx.sym.Symbol):
        raise TypeError(f"weight must be a Symbol or None, got {type(weight).__name__}")
    attrs = validation.parse_ws_attrs(ws_eps, ws_convention)
    backend = validation.check_ws_backend(ws_backend)
    name = _active_name_manager().get(name, 'convolution')
    if weight is None:
        weight = mx.sym.Variable(name + '_weight')
    with _NamedAfter(name):
        like = None
        if backend == 'native':  # the op needs weight's shape before the convolution gives it
            like = ws.weight_shape_like(mx.sym, data, kwargs.get('num_filter'),
                                        kwargs.get('kernel', ()), kwargs.get('num_group', 1),
                                        kwargs.get('layout'))
        standardized = ws.standardize(mx.sym, weight, attrs, backend, like=like)
        return mx.sym.Convolution(data=data, weight=standardized, name=name, **kwargs)
