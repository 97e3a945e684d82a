"""Public entry point: the Gluon layers ``GroupNorm`` and ``StdConv2D`` (defined in
gn_mxnet.operator.gluon)."""
from .operator.gluon import GroupNorm, StdConv2D

__all__ = ['GroupNorm', 'StdConv2D']
