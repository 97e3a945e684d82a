"""What the backend tests share: one case's inputs, a backend run three ways (imperative under
autograd, a bound Symbol, a hybridized Gluon layer), and one rule for judging the results
against the float64 reference (tests/gn_reference.py)."""
import mxnet as mx
import numpy as np

import gn_mxnet
import gn_reference as ref
from gn_mxnet.gluon import GroupNorm

# Tolerance relative to the largest reference magnitude of each compared tensor.
TOLERANCE = {'float64': 1e-10, 'float32': 1e-5, 'float16': 1e-2}
NAMES = ('data', 'gamma', 'beta')


def to_channels_last(shape):
    return (shape[0],) + tuple(shape[2:]) + (shape[1],)


def make_inputs(shape, axis, dtype, param_dtype=None, seed=0, offset=0.0, spread=2.0):
    """x, dy, gamma, beta for one case (x ~ offset + spread * N(0, 1))."""
    rng = np.random.RandomState(seed)
    channels = shape[axis]
    x = (rng.randn(*shape) * spread + offset).astype(dtype)
    dy = rng.randn(*shape).astype(dtype)
    gamma = rng.randn(channels).astype(param_dtype or dtype)
    beta = rng.randn(channels).astype(param_dtype or dtype)
    return x, dy, gamma, beta


def run(backend, x, gamma, beta, dy, groups, axis, eps=1e-5):
    """Forward + backward through gn_mxnet.group_norm under autograd; returns NumPy arrays."""
    arrays = [mx.nd.array(a, dtype=a.dtype) for a in (x, gamma, beta)]
    for a in arrays:
        a.attach_grad()
    with mx.autograd.record():
        y = gn_mxnet.group_norm(*arrays, num_groups=groups, eps=eps, axis=axis, backend=backend)
    y.backward(mx.nd.array(dy, dtype=dy.dtype))
    return [y.asnumpy()] + [a.grad.asnumpy() for a in arrays]


def run_symbolic(backend, x, gamma, beta, dy, groups, axis, eps=1e-5):
    """The same through a bound executor; the variables carry their dtypes, as Gluon's
    parameters and MXNet's typed inputs do."""
    arrays = dict(zip(NAMES, (x, gamma, beta)))
    variables = [mx.sym.var(name, dtype=arrays[name].dtype) for name in NAMES]
    symbol = gn_mxnet.group_norm(*variables, groups, eps=eps, axis=axis, backend=backend)
    executor = symbol.simple_bind(mx.cpu(), **{n: a.shape for n, a in arrays.items()})
    executor.forward(is_train=True, **arrays)
    executor.backward(mx.nd.array(dy, dtype=dy.dtype))
    return [executor.outputs[0].asnumpy()] + [executor.grad_dict[n].asnumpy() for n in NAMES]


def run_gluon(backend, x, gamma, beta, dy, groups, axis, eps=1e-5):
    """The same through a hybridized GroupNorm layer with parameters of gamma's dtype."""
    layer = GroupNorm(groups, in_channels=gamma.shape[0], epsilon=eps, axis=axis,
                      backend=backend)
    layer.initialize()
    layer.cast(gamma.dtype)
    layer.gamma.set_data(mx.nd.array(gamma, dtype=gamma.dtype))
    layer.beta.set_data(mx.nd.array(beta, dtype=beta.dtype))
    layer.hybridize()
    data = mx.nd.array(x, dtype=x.dtype)
    data.attach_grad()
    with mx.autograd.record():
        y = layer(data)
    y.backward(mx.nd.array(dy, dtype=dy.dtype))
    return [y.asnumpy(), data.grad.asnumpy(), layer.gamma.grad().asnumpy(),
            layer.beta.grad().asnumpy()]


def assert_close(actual, expected, dtype, what, scale=None):
    """Error relative to `scale`: by default the largest expected magnitude; for results that
    cancel (dx of a one-element group is exactly 0), the size of the terms they come from.
    No floor but zero: dx is ~1e-300 where |x| ~ 1e300, and a floor there would pass anything."""
    scale = np.abs(expected).max() if scale is None else scale
    scale = scale if scale > 0 else 1.0
    err = np.abs(actual.astype(np.float64) - expected).max() / scale
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]}"


def term_scales(dy, x, gamma, groups, axis, eps=1e-5):
    """The size of the terms each gradient is summed from. A sum whose terms cancel (dx of a
    one-element group is exactly 0; dgamma = Σ dy·x_hat over terms of both signs) is only
    as accurate as its terms' magnitude times the working precision, whatever the kernel."""
    xf = np.moveaxis(x.astype(np.float64), axis, 1)
    N, C = xf.shape[:2]
    grouped = xf.reshape(N, groups, -1)
    mean, rstd = ref.moments(x, groups, eps, axis)  # scale-aware: right at any finite |x|
    x_hat = ((grouped - mean[:, :, None]) * rstd[:, :, None]).reshape(N, C, -1)
    per_channel = np.repeat(rstd, C // groups, axis=1)                       # (N, C)
    abs_dy = np.abs(np.moveaxis(dy.astype(np.float64), axis, 1)).reshape(N, C, -1)
    return {
        'dx': (abs_dy.max(axis=2) * per_channel * np.abs(gamma.astype(np.float64))).max(),
        'dgamma': (abs_dy * np.abs(x_hat)).sum(axis=(0, 2)).max(),
        'dbeta': abs_dy.sum(axis=(0, 2)).max(),
    }


def check_results(results, x, dy, gamma, beta, groups, axis, eps=1e-5):
    """y, dx, dgamma, dbeta against the reference: their dtypes, then their values."""
    y, dx, dgamma, dbeta = results
    dtype = x.dtype.name
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    assert dgamma.dtype == gamma.dtype and dbeta.dtype == beta.dtype
    expected_dx, expected_dgamma, expected_dbeta = ref.backward(dy, x, gamma, groups, eps,
                                                                axis=axis)
    assert_close(y, ref.forward(x, gamma, beta, groups, eps, axis=axis), dtype, 'y')
    terms = term_scales(dy, x, gamma, groups, axis, eps)
    for what, actual, expected in (('dx', dx, expected_dx), ('dgamma', dgamma, expected_dgamma),
                                   ('dbeta', dbeta, expected_dbeta)):
        assert_close(actual, expected, dtype, what,
                     scale=max(np.abs(expected).max(), terms[what]))


def check_against_reference(backend, shape, groups, axis, dtype, param_dtype=None, seed=0,
                            offset=0.0, spread=2.0, runner=run):
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, param_dtype, seed, offset, spread)
    check_results(runner(backend, x, gamma, beta, dy, groups, axis), x, dy, gamma, beta, groups,
                  axis)
