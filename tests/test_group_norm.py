"""All three backends against the float64 reference: forward and the three gradients."""
import itertools

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gn_mxnet
import gn_reference as ref
from gn_checks import (assert_close, check_against_reference, run, run_gluon, run_symbolic,
                       to_channels_last)

BACKENDS = gn_mxnet.BACKENDS

# (shape channels-first, groups other than 1 and C)
SHAPES = [((3, 8), 2), ((2, 8, 5), 4), ((2, 6, 4, 3), 3), ((2, 4, 3, 2, 2), 2)]


GRID = [(backend, shape if axis == 1 else to_channels_last(shape), groups, axis, dtype)
        for backend, (shape, mid), axis, dtype in itertools.product(
            BACKENDS, SHAPES, (1, -1), ('float32', 'float64', 'float16'))
        for groups in (1, mid, shape[1])]


@pytest.mark.parametrize('backend, shape, groups, axis, dtype', GRID)
def test_grid_matches_reference(native_library, backend, shape, groups, axis, dtype):
    check_against_reference(backend, shape, groups, axis, dtype)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, groups, axis', [
    ((4, 16, 32, 32), 2, 1),     # groups of 8192 elements: several statistics chunks each
    ((1, 8, 96, 96), 1, 1),      # fewer groups than threads (2 x kGrain elements): split
    ((2, 40, 40, 64), 4, -1),    # channels-last, many row blocks per sample
    ((2, 3, 16400), 4, -1),      # channels-last with C > one block's elements
    ((1, 40, 40, 64), 4, -1),    # channels-last, fewer samples than threads: blocks split
])
def test_large_shapes_match_reference(native_library, backend, shape, groups, axis):
    check_against_reference(backend, shape, groups, axis, 'float32')


def axis_spellings():
    """Each accepted spelling of the channel axis, 3-D to 5-D: 1 and 1 - ndim channels-first,
    -1 and ndim - 1 channels-last."""
    for shape, groups in SHAPES[1:]:
        ndim = len(shape)
        yield from ((shape, groups, axis) for axis in (1, 1 - ndim))
        yield from ((to_channels_last(shape), groups, axis) for axis in (-1, ndim - 1))


@pytest.mark.parametrize('runner', (run, run_symbolic, run_gluon),
                         ids=('ndarray', 'symbol', 'gluon'))
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, groups, axis', list(axis_spellings()))
def test_every_axis_spelling_matches_reference(native_library, runner, backend, shape, groups,
                                               axis):
    """Every backend reads the channel axis as the shared validator resolves it, in every
    front (the 'ops' graph once took -2 of a 3-D input for the last axis)."""
    check_against_reference(backend, shape, groups, axis, 'float32', runner=runner)


# float32 rounds a mean of 1000 by up to 3e-5 and one of 3 by 1.2e-7; against a std of 2, or
# a std of 1e-3 << sqrt(eps) where rstd ~ 1/sqrt(eps), that rounding alone would break 1e-5
# in y, dx and dgamma. Every backend must recover it (docs/design.md §2 precision).
PRECISION_CASES = [
    ((2, 8, 16, 16), 2, 1, 1000.0, 2.0),    # |mean| >> std
    ((3, 2), 1, 1, 3.0, 1e-3),              # near-constant groups of two
    ((4, 16, 30), 2, 1, 3.0, 1e-3),         # near-constant, one task per group
    ((1, 4, 20000), 1, 1, 3.0, 1e-3),       # near-constant, statistics split across threads
    ((2, 50, 8), 2, -1, 3.0, 1e-3),         # channels-last
    ((2, 40, 40, 64), 4, -1, 1000.0, 2.0),  # channels-last, one sample per task
    ((1, 48, 48, 32), 4, -1, 3.0, 1e-3),    # channels-last, blocks split across threads
]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, groups, axis, offset, spread', PRECISION_CASES)
def test_float32_mean_rounding_is_recovered(native_library, backend, shape, groups, axis,
                                            offset, spread):
    check_against_reference(backend, shape, groups, axis, 'float32', offset=offset,
                            spread=spread)


@pytest.mark.parametrize('backend', BACKENDS)
def test_float16_data_with_float32_params(native_library, backend):
    check_against_reference(backend, (2, 8, 6, 6), 4, 1, 'float16', param_dtype='float32')


@pytest.mark.parametrize('runner', (run_symbolic, run_gluon), ids=('symbol', 'gluon'))
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('param_dtype', ('float16', 'float32'))
def test_float16_graphs_keep_statistics_in_float32(native_library, runner, backend,
                                                    param_dtype):
    """Groups of 8192 values near 20: their float16 sums overflow (the 'ops' graph took
    float16 statistics and returned NaN)."""
    case = (backend, (2, 4, 64, 64), 2, 1, 'float16', param_dtype)
    if backend == 'ops' and runner is run_gluon and param_dtype == 'float32':
        # Float32 parameters are all a hybridized layer's graph knows of its dtype: 'ops'
        # takes the data for float32, and float16 data is refused, not miscomputed.
        with pytest.raises(mx.base.MXNetError, match='expected float32, got float16'):
            check_against_reference(*case, offset=20.0, runner=runner)
        return
    check_against_reference(*case, offset=20.0, runner=runner)


def test_ops_refuses_float16_symbols_of_unknown_dtype():
    """Where nothing in the graph says the data is float16, 'ops' cannot compute it in
    float32 (MXNet 1.9 has no stock cast to 'the data's dtype'): binding float16 fails,
    naming the check, rather than returning float16 statistics. float32 and float64 bind."""
    data, gamma, beta = (mx.sym.var(n) for n in ('data', 'gamma', 'beta'))
    symbol = gn_mxnet.group_norm(data, gamma, beta, 2, backend='ops')
    with pytest.raises(mx.base.MXNetError, match='groupnorm_ops_float16_needs_typed_data'):
        symbol.infer_type(data='float16')
    for dtype in ('float32', 'float64'):
        assert symbol.infer_type(data=dtype)[1] == [np.dtype(dtype)]


def grouped_symbol(backend, groups, axis):
    data, gamma, beta = (mx.sym.var(n) for n in ('data', 'gamma', 'beta'))
    return gn_mxnet.group_norm(data, gamma, beta, groups, axis=axis, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, groups, axis', [((2, 4, 3), 2, 1), ((2, 3, 2, 4), 2, -1),
                                                 ((3, 6), 3, 1)])
def test_numeric_gradient(native_library, backend, shape, groups, axis):
    rng = np.random.RandomState(1)
    channels = shape[axis]
    location = {'data': rng.randn(*shape), 'gamma': rng.randn(channels),
                'beta': rng.randn(channels)}
    mx.test_utils.check_numeric_gradient(grouped_symbol(backend, groups, axis), location,
                                         numeric_eps=1e-6, rtol=1e-4, atol=1e-6,
                                         dtype=np.float64)


@pytest.mark.parametrize('backend', BACKENDS)
def test_symbolic_equals_imperative(native_library, backend):
    rng = np.random.RandomState(2)
    shape, groups = (2, 6, 5, 5), 3
    x, dy = rng.randn(*shape).astype('f4'), rng.randn(*shape).astype('f4')
    gamma, beta = rng.randn(6).astype('f4'), rng.randn(6).astype('f4')
    imperative = run(backend, x, gamma, beta, dy, groups, 1)
    executor = grouped_symbol(backend, groups, 1).simple_bind(mx.cpu(), data=shape)
    executor.forward(is_train=True, data=x, gamma=gamma, beta=beta)
    executor.backward(mx.nd.array(dy))
    symbolic = [executor.outputs[0]] + [executor.grad_dict[n] for n in ('data', 'gamma', 'beta')]
    for a, b in zip(imperative, symbolic):
        np.testing.assert_allclose(a, b.asnumpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('backend', BACKENDS)
def test_grad_req_add_accumulates(native_library, backend):
    """lib_api never tells the op to add; the front must still honour grad_req='add'."""
    rng = np.random.RandomState(3)
    x = mx.nd.array(rng.randn(2, 4, 3, 3))
    gamma, beta = mx.nd.array(rng.randn(4)), mx.nd.array(rng.randn(4))
    weights = mx.nd.array(rng.randn(2, 4, 3, 3))
    grads = {}
    for req in ('write', 'add'):
        arrays = [a.copy() for a in (x, gamma, beta)]
        for a in arrays:
            a.attach_grad(grad_req=req)
        for _ in range(2):
            with mx.autograd.record():
                loss = (gn_mxnet.group_norm(*arrays, 2, backend=backend) * weights).sum()
            loss.backward()
        grads[req] = [a.grad.asnumpy() for a in arrays]
    for written, added in zip(grads['write'], grads['add']):
        np.testing.assert_allclose(added, 2 * written, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('backend', BACKENDS)
def test_after_convolution_in_mkldnn_layout(native_library, backend):
    """Conv2D outputs may be in MKLDNN's blocked layout; every backend must read them right."""
    rng = np.random.RandomState(4)
    x = mx.nd.array(rng.randn(2, 3, 8, 8))
    weight = mx.nd.array(rng.randn(16, 3, 3, 3))
    gamma, beta = mx.nd.array(rng.randn(16)), mx.nd.array(rng.randn(16))
    hidden = mx.nd.Convolution(x, weight, num_filter=16, kernel=(3, 3), pad=(1, 1), no_bias=True)
    y = gn_mxnet.group_norm(hidden, gamma, beta, 4, backend=backend).asnumpy()
    expected = ref.forward(hidden.asnumpy(), gamma.asnumpy(), beta.asnumpy(), 4)
    assert_close(y, expected, 'float32', 'y after conv')


@pytest.mark.parametrize('backend', BACKENDS)
def test_nan_and_inf_propagate_without_crash(native_library, backend):
    x = np.random.RandomState(5).randn(2, 4, 3, 3).astype('f4')
    x[0, 0, 1, 1] = np.nan
    x[1, 3, 0, 0] = np.inf
    y = gn_mxnet.group_norm(mx.nd.array(x), mx.nd.ones(4), mx.nd.zeros(4), 2,
                            backend=backend).asnumpy()
    assert np.isnan(y[0, :2]).all()              # the NaN's group
    assert not np.isfinite(y[1, 2:]).any()       # the Inf's group
    assert np.isfinite(y[0, 2:]).all() and np.isfinite(y[1, :2]).all()  # the other groups


def test_backends_agree_on_a_resnet_stage_shape(native_library):
    rng = np.random.RandomState(6)
    x = rng.randn(2, 64, 14, 14).astype('f4')
    gamma, beta = rng.randn(64).astype('f4'), rng.randn(64).astype('f4')
    outputs = [gn_mxnet.group_norm(mx.nd.array(x), mx.nd.array(gamma), mx.nd.array(beta), 32,
                                   backend=b).asnumpy() for b in BACKENDS]
    for other in outputs[1:]:
        np.testing.assert_allclose(outputs[0], other, rtol=1e-5, atol=1e-5)


@st.composite
def problems(draw):
    groups, per_group = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    spatial = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
    shape = (draw(st.integers(1, 3)), groups * per_group) + tuple(spatial)
    axis = draw(st.sampled_from((1, -1)))
    if axis == -1:
        shape = to_channels_last(shape)
    dtype = draw(st.sampled_from(('float32', 'float64')))
    offset, spread = draw(st.sampled_from(((0.0, 2.0), (3.0, 1e-3), (1000.0, 2.0))))
    return shape, groups, axis, dtype, offset, spread, draw(st.integers(0, 2**31 - 1))


# derandomize: the same 200 examples on every run, so CI is reproducible. A random search of
# 20,000 examples found no failure (docs/user_guide.md, "Precision").
@settings(max_examples=200, deadline=None, derandomize=True)
@given(problems())
def test_hypothesis_native_matches_reference(native_library, problem):
    shape, groups, axis, dtype, offset, spread, seed = problem
    check_against_reference('native', shape, groups, axis, dtype, seed=seed, offset=offset,
                            spread=spread)
