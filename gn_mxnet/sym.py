"""Public entry point: the Symbol API ``GroupNorm`` and ``std_convolution`` (defined in
gn_mxnet.operator.symbol)."""
from .operator.symbol import GroupNorm, std_convolution

__all__ = ['GroupNorm', 'std_convolution']
