"""Right answers at every finite magnitude (issue 24): float32 |x| up to 1e30 and float64 up to
1e300, where the kernels' sums of squares overflow (float32 from ~1e18, float64 from ~1e154),
forward and all three gradients, every backend, both layouts, the fused forms of the native op,
and tiny |x| where the squares underflow instead. Checked against tests/gn_reference.py, which
is scale-aware, with no absolute floor (dx is ~1/|x|: 1e-300 at 1e300)."""
import mxnet as mx
import numpy as np
import pytest

import gn_mxnet
import gn_reference as ref
from gn_checks import TOLERANCE, check_results, make_inputs, run, to_channels_last

# The reported magnitudes: 1e19 float32 and 1e155 float64 failed on main (y = 0, y = NaN).
HUGE = [('float32', 1e19), ('float32', 1e30), ('float64', 1e155), ('float64', 1e300)]
SHAPE, GROUPS = (2, 6, 5, 4), 3
# Past the CPU kernels' one-thread grain with one group per sample: the paths that split a
# group's statistics over threads (docs/design.md §3).
SPLIT_SHAPE, SPLIT_GROUPS = (1, 4, 150, 150), 1


def _layout(shape, channels_last):
    return (to_channels_last(shape), -1) if channels_last else (shape, 1)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype,magnitude', HUGE)
@pytest.mark.parametrize('backend', gn_mxnet.BACKENDS)
def test_huge_inputs_match_reference(native_library, backend, dtype, magnitude, channels_last):
    shape, axis = _layout(SHAPE, channels_last)
    # mean ~ magnitude as well as spread ~ magnitude: both the sum and the squares overflow
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, seed=1, offset=magnitude,
                                     spread=magnitude)
    assert np.isfinite(x).all()
    check_results(run(backend, x, gamma, beta, dy, GROUPS, axis), x, dy, gamma, beta, GROUPS,
                  axis)


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype,magnitude', [('float32', 1e30), ('float64', 1e300)])
def test_huge_inputs_on_the_split_paths(native_library, dtype, magnitude, channels_last):
    shape, axis = _layout(SPLIT_SHAPE, channels_last)
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, seed=2, spread=magnitude)
    check_results(run('native', x, gamma, beta, dy, SPLIT_GROUPS, axis), x, dy, gamma, beta,
                  SPLIT_GROUPS, axis)


def _relative(got, want):
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('act', ['none', 'relu', 'silu'])
@pytest.mark.parametrize('dtype,magnitude', HUGE)
def test_huge_inputs_fused_native(native_library, dtype, magnitude, act, channels_last):
    """The fused forms share the forward's statistics and the backward's coefficients."""
    shape, axis = _layout(SHAPE, channels_last)
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, seed=3, spread=magnitude)
    residual = np.random.RandomState(4).randn(*shape).astype(dtype)
    X, R, DY, G, B = (mx.nd.array(a, dtype=dtype) for a in (x, residual, dy, gamma, beta))
    for a in (X, G, B, R):
        a.attach_grad()
    with mx.autograd.record():
        y = gn_mxnet.group_norm(X, G, B, GROUPS, axis=axis, backend='native', act_type=act,
                                residual=R)
    y.backward(DY)
    want = ref.fused_backward(dy, x, gamma, beta, GROUPS, 1e-5, axis, act, residual)
    want = (ref.fused_forward(x, gamma, beta, GROUPS, 1e-5, axis, act, residual),) + want
    for name, got, expected in zip(('y', 'dx', 'dgamma', 'dbeta', 'dresidual'),
                                   (y, X.grad, G.grad, B.grad, R.grad), want):
        err = _relative(got.asnumpy(), expected)
        assert err <= 10 * TOLERANCE[dtype], f'{name}: relative error {err:.3g}'


@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('dtype,magnitude', [('float32', 1e-30), ('float64', 1e-300)])
@pytest.mark.parametrize('backend', gn_mxnet.BACKENDS)
def test_tiny_inputs_stay_right(native_library, backend, dtype, magnitude, channels_last):
    """Squares underflow to 0 here, harmlessly: eps dominates var. Compared relative to the
    outputs' own size (y ~ |x| / sqrt(eps)), which the shared check's zero floor allows."""
    shape, axis = _layout(SHAPE, channels_last)
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, seed=5, spread=magnitude)
    y, dx, dgamma, dbeta = run(backend, x, gamma, beta, dy, GROUPS, axis)
    want = (ref.forward(x, gamma, beta, GROUPS, 1e-5, axis),) + ref.backward(dy, x, gamma,
                                                                            GROUPS, 1e-5, axis)
    for name, got, expected in zip(('y', 'dx', 'dgamma', 'dbeta'), (y, dx, dgamma, dbeta), want):
        err = _relative(got, expected)
        assert err <= 10 * TOLERANCE[dtype], f'{name}: relative error {err:.3g}'


@pytest.mark.parametrize('dtype,magnitude', [('float32', 3e37), ('float64', 1e307)])
@pytest.mark.parametrize('backend', ['native', 'custom'])
def test_constant_group_whose_sum_overflows(native_library, backend, dtype, magnitude):
    """A group of 8192 equal values whose sum overflows: the native op's rescaled statistics
    (taken only then) must still give var 0 and rstd 1/sqrt(eps), not 1/(s·0) = inf, which
    made y NaN. Past the promised 1e30 / 1e300, where the 'ops' backend's own sums overflow."""
    x, dy, gamma, beta = make_inputs((1, 2, 64, 64), 1, dtype, seed=6, offset=magnitude,
                                     spread=0.0)
    assert np.isinf(np.sum(x, dtype=x.dtype))
    check_results(run(backend, x, gamma, beta, dy, 1, 1), x, dy, gamma, beta, 1, 1)
