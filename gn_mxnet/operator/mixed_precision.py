"""How MXNet's AMP (``mx.contrib.amp``) treats GroupNormalization (docs/design.md §3).

AMP decides per op name from the lists in ``mxnet/contrib/amp/lists/``; an op in none of them
is passed through and may not be named in ``amp.init(fp32_ops=...)`` or
``amp.convert_symbol(target_dtype_ops=...)``. ``load_library()`` lists the op:

- float16: ``FP16_FP32_FUNCS``, the ops that run in whichever of the two they are given (like
  BatchNorm). The kernels accumulate float16 data in float32, so float16 data stays float16 in
  and out and mean/rstd are float32; nothing casts around the op. Unlike MXNet's own GroupNorm
  (in ``FP32_FUNCS``: it sums in the data's type), ours needs no float32 copy of its input.
- bfloat16: ``FP32_FUNCS``: the op has no bfloat16 kernel, so AMP casts its input to float32.

The three outputs need no cast policy of their own: the fronts use y only, and mean/rstd are
float32 statistics that AMP leaves as they are.
"""
import contextlib
import sys

from mxnet.base import _OP_NAME_PREFIX_LIST

OP_NAME = 'GroupNormalization'


def register_with_amp():
    """Add the op to AMP's float16 and bfloat16 lists (once)."""
    from mxnet.contrib.amp.lists import symbol_bf16, symbol_fp16
    for names in (symbol_fp16.FP16_FP32_FUNCS, symbol_bf16.FP32_FUNCS):
        if OP_NAME not in names:
            names.append(OP_NAME)


def _op_modules():
    """The modules holding op functions: those mx.library.load regenerates and AMP wraps."""
    names = []
    for front in ('ndarray', 'symbol'):
        names += ['mxnet.' + front, 'mxnet.%s.op' % front, 'mxnet.%s._internal' % front]
        names += ['mxnet.%s.%s' % (front, prefix[1:-1]) for prefix in _OP_NAME_PREFIX_LIST]
    return [sys.modules[name] for name in names if name in sys.modules]


def _amp_wrappers():
    """(module, name, function) of every op function an earlier amp.init() replaced."""
    amp = sys.modules.get('mxnet.contrib.amp.amp')
    if amp is None or not getattr(amp, '_amp_initialized', False):
        return []
    # AMP's wrappers are closures defined in amp.py; the op functions MXNet generates are not.
    return [(module, name, value) for module in _op_modules()
            for name, value in list(vars(module).items())
            if getattr(getattr(value, '__code__', None), 'co_filename', None) == amp.__file__]


@contextlib.contextmanager
def keeping_amp_wrappers():
    """Around mx.library.load: it regenerates every mx.nd/mx.sym op function, which would
    silently drop the casts of an amp.init() called before it; put AMP's wrappers back. They
    call the op functions from before the load, which stay valid (an op is called by its
    handle, and loading a library only adds ops). Ops the library adds get no wrapper; for
    GroupNormalization under float16 that is AMP's policy anyway (FP16_FP32_FUNCS)."""
    saved = _amp_wrappers()
    try:
        yield
    finally:
        for module, name, function in saved:
            setattr(module, name, function)
