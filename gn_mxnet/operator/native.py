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


# Whether MKLDNN graphs give the op a plain-layout copy of its input (below); a switch so that
# `bench_train.py --breakdown --without-plain-copy` can measure the alternative side by side.
PLAIN_COPY = True


def _mkldnn_enabled():
    """Whether convolutions in a CPU graph may hand the op MKLDNN-blocked data."""
    return (mx.runtime.Features().is_enabled('MKLDNN')
            and os.environ.get('MXNET_MKLDNN_ENABLED', '1') != '0')


def native_group_norm(F, data, gamma, beta, attrs, name=None, residual=None):
    """The C++/CUDA op GroupNormalization, y only; attrs come from the shared validator. A
    residual is the op's fourth input (has_residual=1)."""
    load_library()
    # lib_api does not tell an op whether to write or add its gradients, so the library
    # always writes. Where an 'add' is possible, an identity in front of the input turns it
    # into a write into a temporary, which the identity's backward then adds as asked.
    inputs = (data, gamma, beta) + (() if residual is None else (residual,))
    inputs = [F.identity(v) if _may_accumulate(F, v) else v for v in inputs]
    if F is mx.sym and PLAIN_COPY and _mkldnn_enabled():
        # MXNet converts an MKLDNN-blocked input of a lib_api op to the default layout into
        # fresh memory on every call, and again for the backward, which gets every forward
        # input (docs/design.md §3). MKLDNN's Reshape writes that layout once, into memory the
        # graph's planner reuses, and the backward then reads the same plain copy
        # (`bench_train.py --breakdown`; docs/benchmarks.md, "Where GN's time goes"). A residual comes
        # from a convolution as often as x does.
        inputs[0] = F.reshape(inputs[0], shape=(0, 0, -2))
        if residual is not None:
            inputs[3] = F.reshape(inputs[3], shape=(0, 0, -2))
    outputs = F.GroupNormalization(*inputs, num_groups=attrs.num_groups,
                                   eps=repr(attrs.eps), axis=attrs.axis,
                                   act_type=attrs.act_type,
                                   has_residual=int(residual is not None), name=name)
    # The op also returns mean and rstd (lib_api cannot hide outputs); users get y only.
    return outputs[0]
