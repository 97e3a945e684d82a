"""Keyword inputs for the compiled op's functions `mx.nd.GroupNormalization` and
`mx.sym.GroupNormalization`.

A lib_api op declares no input names, so the functions MXNet generates for it take inputs
positionally only: `mx.sym.GroupNormalization(data=x, gamma=g, beta=b, num_groups=2)` passes
the three as unknown keywords and fails deep in nnvm with "Not enough argument to call operator
GroupNormalization". `load_library` installs these wrappers right after `mx.library.load`
(which rebuilds every op function, docs/design.md §3): they put keyword inputs in their places
and otherwise call MXNet's function unchanged, which still returns [y, mean, rstd].
"""
import functools

import mxnet as mx

OP_NAME = 'GroupNormalization'
INPUT_NAMES = ('data', 'gamma', 'beta', 'residual')  # residual: only with has_residual=1
REQUIRED = 3
_FRONT = ("gn_mxnet.sym.GroupNorm(data=..., name=...) (it creates <name>_gamma and "
          "<name>_beta) or gn_mxnet.group_norm(data, gamma, beta, num_groups)")


def _arranged(args, kwargs):
    """The three inputs in order, from positional and keyword arguments (popped from kwargs)."""
    inputs = list(args) + [None] * (len(INPUT_NAMES) - len(args))
    for position, input_name in enumerate(INPUT_NAMES):
        if input_name not in kwargs:
            continue
        if position < len(args):
            raise TypeError(f"{OP_NAME} got {input_name} both as positional input "
                            f"{position} and as a keyword")
        inputs[position] = kwargs.pop(input_name)
    missing = [n for n, value in zip(INPUT_NAMES[:REQUIRED], inputs) if value is None]
    if len(inputs) != len(INPUT_NAMES) or missing:
        raise ValueError(f"{OP_NAME} (the compiled op) takes the inputs data, gamma "
                         f"and beta (and residual with has_residual=1), got {len(args)} "
                         f"positional and missing {', '.join(missing) or 'none'}; for a layer "
                         f"that makes its own gamma/beta use {_FRONT}")
    return inputs if inputs[REQUIRED] is not None else inputs[:REQUIRED]


def _accepting_keywords(generated):
    @functools.wraps(generated)
    def GroupNormalization(*args, **kwargs):
        return generated(*_arranged(args, kwargs), **kwargs)

    GroupNormalization.accepts_keyword_inputs = True
    return GroupNormalization


def install():
    """Wrap the op's function of mx.nd and of mx.sym (each also reached as mx.nd.op / mx.sym.op),
    once per load."""
    for namespace, op_module in ((mx.nd, mx.nd.op), (mx.sym, mx.sym.op)):
        generated = getattr(op_module, OP_NAME)
        if not getattr(generated, 'accepts_keyword_inputs', False):
            generated = _accepting_keywords(generated)
        setattr(op_module, OP_NAME, generated)
        setattr(namespace, OP_NAME, generated)
