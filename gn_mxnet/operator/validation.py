"""The one validator of GroupNorm attributes and shapes, shared by every front and backend.

The C++ operator checks the same things in its parseAttrs/inferShape and words its errors the
same way, so a user sees one message whichever backend runs.
"""
import numbers
from typing import NamedTuple, Optional, Sequence

import numpy as np

SUPPORTED_DTYPES = ('float16', 'float32', 'float64')
# 'native': the compiled op (operators/); 'custom': the Python CustomOp; 'ops': stock MXNet ops.
BACKENDS = ('native', 'custom', 'ops')
"""The GroupNorm backends every front accepts as `backend=`: 'native' (the compiled C++/CUDA
op), 'custom' (a Python CustomOp computing in float64), 'ops' (stock MXNet ops, any device)."""
# The fused form's activations, y = act(GN(x) + residual); their codes are
# operators/group_norm_kernels.h's GN_ACT_* (build.ACT_CODES), the names the op's act_type.
ACT_TYPES = ('none', 'relu', 'silu')


class GroupNormAttrs(NamedTuple):
    num_groups: int
    eps: float
    axis: int
    act_type: str = 'none'


class AxisLayout(NamedTuple):
    """What an axis value alone says, for a Symbol (its ndim is unknown while the graph is
    built): channels-last or not, and the one ndim it is valid for (None: any)."""
    channels_last: bool
    ndim: Optional[int]


class GroupNormLayout(NamedTuple):
    """x viewed as (N, C, S) when channels-first, (N, S, C) when channels-last."""
    batch: int
    channels: int
    spatial: int
    channels_last: bool


def parse_attrs(num_groups, eps=1e-5, axis=1, act_type='none') -> GroupNormAttrs:
    """Validate attribute values (types and ranges that need no shape)."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral):
        raise ValueError(f"num_groups must be an integer, got {num_groups!r}")
    if num_groups <= 0:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a real number, got {eps!r}")
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ValueError(f"axis must be an integer, got {axis!r}")
    return GroupNormAttrs(int(num_groups), float(eps), int(axis), check_act_type(act_type))


def check_act_type(act_type) -> str:
    if act_type not in ACT_TYPES:
        raise ValueError(f"act_type must be one of {', '.join(repr(a) for a in ACT_TYPES)}, "
                         f"got {act_type!r}")
    return act_type


def parse_has_residual(value) -> bool:
    """The op's has_residual attribute, as a Symbol's JSON or a CustomOp's kwargs carry it
    (a string) or as a front passes it (an int): only 0 and 1, like the C++ op."""
    flag = str(value)
    if isinstance(value, bool) or flag not in ('0', '1'):
        raise ValueError(f"has_residual must be 0 or 1, got '{flag}'")
    return flag == '1'


def check_residual(data_shape, data_dtype, residual_shape, residual_dtype) -> None:
    """The fused form's residual: data's shape and dtype."""
    data_shape, residual_shape = tuple(data_shape), tuple(residual_shape)
    if residual_shape != data_shape:
        raise ValueError(f"residual must have data's shape {data_shape}, got {residual_shape}")
    data_name, residual_name = np.dtype(data_dtype).name, np.dtype(residual_dtype).name
    if residual_name != data_name:
        raise ValueError(f"residual dtype must match data ({data_name}), got {residual_name}")


def channel_axis(axis: int, ndim: int) -> int:
    """The non-negative channel axis; only the first (after N) or the last axis is allowed."""
    if ndim < 2 or ndim > 5:
        raise ValueError(f"data must have 2 to 5 dimensions (N, C, ...), got {ndim}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for data with {ndim} dimensions")
    resolved = axis % ndim
    if resolved not in (1, ndim - 1):
        raise ValueError(f"axis must be the channel axis: 1 (channels-first) or -1 "
                         f"(channels-last), got {axis} for data with {ndim} dimensions")
    return resolved


def axis_layout(axis: int) -> AxisLayout:
    """The layout `axis` means whatever ndim the data turns out to have.

    1 and -1 hold for every ndim. Any other value is the channel axis of exactly one ndim,
    |axis| + 1, where k >= 2 is the last axis and -k the one after N; channel_axis refuses it
    for every other ndim, so a Symbol front must check that ndim once shapes are known. (For
    2-D data, channels-first and channels-last are the same bytes.) Refuses here the values
    that no ndim allows.
    """
    if axis in (1, -1):
        return AxisLayout(channels_last=axis == -1, ndim=None)
    if axis == 0:
        raise ValueError("axis must be the channel axis: 1 (channels-first) or -1 "
                         "(channels-last), got 0 (the batch axis)")
    ndim = abs(axis) + 1
    if ndim > 5:
        raise ValueError(f"axis {axis} is out of range for data with 2 to 5 dimensions")
    return AxisLayout(channels_last=axis > 0, ndim=ndim)


def check_dtype(dtype, what='data') -> str:
    name = np.dtype(dtype).name
    if name not in SUPPORTED_DTYPES:
        raise ValueError(f"{what} dtype must be one of {', '.join(SUPPORTED_DTYPES)}, "
                         f"got {name}")
    return name


def check_param_dtype(data_dtype, param_dtype, what) -> None:
    data_name, param_name = np.dtype(data_dtype).name, check_dtype(param_dtype, what)
    if param_name != data_name and not (data_name == 'float16' and param_name == 'float32'):
        raise ValueError(f"{what} dtype must match data ({data_name})"
                         f"{' or be float32' if data_name == 'float16' else ''}, "
                         f"got {param_name}")


def layout(attrs: GroupNormAttrs, data_shape: Sequence[int],
           gamma_shape: Optional[Sequence[int]] = None,
           beta_shape: Optional[Sequence[int]] = None) -> GroupNormLayout:
    """Validate shapes against the attributes; returns the (N, C, S) view."""
    shape = tuple(int(d) for d in data_shape)
    axis = channel_axis(attrs.axis, len(shape))
    if any(d <= 0 for d in shape):
        raise ValueError(f"data must be non-empty: shape {shape} has a zero-size dimension "
                         f"(MXNet 1.9 reads 0 as an unknown dimension)")
    channels = shape[axis]
    if channels % attrs.num_groups != 0:
        raise ValueError(f"num_groups ({attrs.num_groups}) must divide the number of "
                         f"channels ({channels})")
    for name, param_shape in (('gamma', gamma_shape), ('beta', beta_shape)):
        if param_shape is not None and tuple(param_shape) != (channels,):
            raise ValueError(f"{name} must have shape ({channels},) (one per channel), "
                             f"got {tuple(param_shape)}")
    spatial = int(np.prod(shape[2:] if axis == 1 else shape[1:-1], dtype=np.int64))
    return GroupNormLayout(shape[0], channels, spatial, channels_last=(axis != 1))


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return backend


# ---- Weight Standardization (gn_mxnet/operator/weight_standardization.py) ------------------
# The op WeightStandardization (operators/weight_standardization_op.cc) checks the same things
# with the same words.

WS_CONVENTIONS = ('qiao', 'timm')
"""How a weight is standardized per output channel (weight_standardization.py's docstring
gives both formulas): 'qiao' (Qiao et al.'s code, mmcv's ConvWS2d), 'timm' (timm's StdConv2d)."""
WS_DEFAULT_EPS = {'qiao': 1e-5, 'timm': 1e-6}  # each convention's own default
WS_BACKENDS = ('native', 'ops')
"""The Weight Standardization backends: 'native' (the compiled op WeightStandardization),
'ops' (stock MXNet ops, any device)."""


class WSAttrs(NamedTuple):
    eps: float
    convention: str


def parse_ws_attrs(eps=None, convention='qiao') -> WSAttrs:
    """The convention and its eps (None: the convention's default); eps must be > 0 (with a
    zero-variance channel, eps is all that keeps 'timm' finite)."""
    if convention not in WS_CONVENTIONS:
        raise ValueError(f"convention must be one of "
                         f"{', '.join(repr(c) for c in WS_CONVENTIONS)}, got {convention!r}")
    if eps is None:
        eps = WS_DEFAULT_EPS[convention]
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise ValueError(f"eps must be a real number, got {eps!r}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be finite and > 0, got {eps}")
    return WSAttrs(float(eps), convention)


def check_ws_backend(backend: str) -> str:
    if backend not in WS_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(WS_BACKENDS)}, got {backend!r}")
    return backend


def check_weight(shape: Sequence[int], dtype) -> int:
    """A weight to standardize: (O, ...) with ndim >= 2, non-empty, a float dtype. Returns K,
    the number of weights per output channel."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out_channels, ...), "
                         f"got {len(shape)}")
    if any(d <= 0 for d in shape):
        raise ValueError(f"weight must be non-empty: shape {shape} has a zero-size dimension")
    check_dtype(dtype, 'weight')
    return int(np.prod(shape[1:], dtype=np.int64))
