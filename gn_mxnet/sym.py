"""Public entry point: the Symbol API ``GroupNorm`` (defined in gn_mxnet.operator.symbol)."""
from .operator.symbol import GroupNorm

__all__ = ['GroupNorm']
