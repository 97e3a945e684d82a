"""Public entry point: the Gluon ``GroupNorm`` layer (defined in gn_mxnet.operator.gluon)."""
from .operator.gluon import GroupNorm

__all__ = ['GroupNorm']
