"""Public entry point: ONNX export (defined in gn_mxnet.operator.onnx_export).

Importing it registers GroupNorm's translations with MXNet's exporter, so `mx.onnx.export_model`
handles nets with any GroupNorm backend too. Needs the optional extra: pip install -e ".[onnx]".
"""
from .operator.onnx_export import (GROUP_NORM_FORMS, export_model, group_norm_form,
                                   onnx_group_norm_available)

__all__ = ['GROUP_NORM_FORMS', 'export_model', 'group_norm_form', 'onnx_group_norm_available']
