"""The 'native' backend: the compiled GroupNormalization op (operators/, loaded by library.py)."""
import os

import mxnet as mx

from .library import load_library


def _may_accumulate(F, value):
    """Whether MXNet may ask for value's gradient to be added rather than written: a leaf
    NDArray with a gradient buffer, a Symbol variable, or anything under
    MXNET_EXEC_ENABLE_ADDTO=1 (whose executor adds into shared gradient buffers)."""
    if os.environ.get('MXNET_EXEC_ENABLE_ADDTO', '0') == '1':
        return True
    if F is mx.nd:
        return value.grad is not None
    return value.get_children() is None


def native_group_norm(F, data, gamma, beta, attrs, name=None, residual=None):
    """The C++/CUDA op GroupNormalization, y only; attrs come from the shared validator. A
    residual is the op's fourth input (has_residual=1)."""
    load_library()
    # lib_api does not tell an op whether to write or add its gradients, so the library
    # always writes. Where an 'add' is possible, an identity in front of the input turns it
    # into a write into a temporary, which the identity's backward then adds as asked.
    inputs = (data, gamma, beta) + (() if residual is None else (residual,))
    inputs = [F.identity(v) if _may_accumulate(F, v) else v for v in inputs]
    outputs = F.GroupNormalization(*inputs, num_groups=attrs.num_groups,
                                   eps=repr(attrs.eps), axis=attrs.axis,
                                   act_type=attrs.act_type,
                                   has_residual=int(residual is not None), name=name)
    # The op also returns mean and rstd (lib_api cannot hide outputs); users get y only.
    return outputs[0]
