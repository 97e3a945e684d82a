"""The fused form y = act(GN(x) + residual) against tests/gn_reference.py: every backend,
act_type and residual or none, the dtypes the plain op takes, both layouts, both CPU builds
(the generic one in a subprocess), a float64 numeric gradient check, and the errors."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

import gn_mxnet
import gn_reference as ref
from abi_checks import assert_backward_subsets_match_full
from gn_mxnet.operator import build, validation

BACKENDS = validation.BACKENDS
ACTS = validation.ACT_TYPES
TOLERANCE = {'float64': 1e-9, 'float32': 1e-4, 'float16': 2e-2}


def _case(axis, seed):
    rng = np.random.default_rng(seed)
    shape = (2, 8, 5, 3) if axis == 1 else (2, 5, 3, 8)
    return (rng.standard_normal(shape), rng.standard_normal(8) * 0.5 + 1.0,
            rng.standard_normal(8), rng.standard_normal(shape), rng.standard_normal(shape))


def _run(backend, dtype, axis, act, with_residual, seed=0):
    x, gamma, beta, residual, dy = _case(axis, seed)
    param_dtype = 'float32' if dtype == 'float16' else dtype
    X, R, DY = (mx.nd.array(a, dtype=dtype) for a in (x, residual, dy))
    G, B = (mx.nd.array(a, dtype=param_dtype) for a in (gamma, beta))
    for a in (X, G, B, R):
        a.attach_grad()
    with mx.autograd.record():
        y = gn_mxnet.group_norm(X, G, B, 2, axis=axis, backend=backend, act_type=act,
                                residual=R if with_residual else None)
    y.backward(DY)
    # the reference takes the inputs as the op saw them (rounded to dtype)
    x, gamma, beta, residual, dy = (a.asnumpy().astype(np.float64) for a in (X, G, B, R, DY))
    r = residual if with_residual else None
    want = dict(zip(('dx', 'dgamma', 'dbeta', 'dresidual'),
                    ref.fused_backward(dy, x, gamma, beta, 2, 1e-5, axis, act, r)))
    want['y'] = ref.fused_forward(x, gamma, beta, 2, 1e-5, axis, act, r)
    got = dict(y=y, dx=X.grad, dgamma=G.grad, dbeta=B.grad, dresidual=R.grad)
    names = ['y', 'dx', 'dgamma', 'dbeta'] + (['dresidual'] if with_residual else [])
    return {n: float(np.abs(got[n].asnumpy().astype(np.float64) - want[n]).max()
                     / max(np.abs(want[n]).max(), 1.0)) for n in names}


@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('axis', [1, -1])
@pytest.mark.parametrize('dtype', ['float64', 'float32', 'float16'])
@pytest.mark.parametrize('backend', BACKENDS)
def test_fused_matches_reference(backend, dtype, axis, act, with_residual):
    for name, err in _run(backend, dtype, axis, act, with_residual).items():
        assert err <= TOLERANCE[dtype], f'{name}: rel err {err:.3g}'


def test_fused_matches_reference_on_generic_build(native_library):
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__,
         '-k', 'test_fused_matches_reference and native and not generic'],
        env=dict(os.environ, GN_MXNET_CPU_ISA='generic'), capture_output=True, text=True,
        timeout=600, cwd=os.path.dirname(os.path.abspath(__file__)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert ' passed' in result.stdout and ' failed' not in result.stdout


@pytest.mark.parametrize('act', ['relu', 'silu'])
def test_numeric_gradient_float64(act):
    """Central differences of sum(w * y) in float64 against the native op's backward."""
    rng = np.random.default_rng(3)
    x, residual = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3))
    gamma, beta, w = rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal((2, 4, 3))
    arrays = [mx.nd.array(a, dtype='float64') for a in (x, gamma, beta, residual)]

    def loss(*inputs):
        y = gn_mxnet.group_norm(inputs[0], inputs[1], inputs[2], 2, act_type=act,
                                residual=inputs[3])
        return (y * mx.nd.array(w, dtype='float64')).sum()

    for a in arrays:
        a.attach_grad()
    with mx.autograd.record():
        out = loss(*arrays)
    out.backward()
    h = 1e-6
    for index, a in enumerate(arrays):
        flat = a.asnumpy().ravel()
        numeric = np.empty_like(flat)
        for i in range(flat.size):
            shifted = []
            for step in (h, -h):
                moved = flat.copy()
                moved[i] += step
                inputs = list(arrays)
                inputs[index] = mx.nd.array(moved.reshape(a.shape), dtype='float64')
                shifted.append(loss(*inputs).asscalar())
            numeric[i] = (shifted[0] - shifted[1]) / (2 * h)
        np.testing.assert_allclose(a.grad.asnumpy().ravel(), numeric, rtol=1e-5, atol=1e-6)


def test_act_codes_come_from_the_kernels_header():
    assert tuple(build.ACT_CODES) == ACTS


@pytest.mark.parametrize('backend', BACKENDS)
def test_bad_fused_arguments_are_refused(backend):
    x = mx.nd.ones((2, 4, 3))
    gamma, beta = mx.nd.ones(4), mx.nd.zeros(4)
    with pytest.raises(ValueError, match="act_type must be one of 'none', 'relu', 'silu', "
                                         "got 'gelu'"):
        gn_mxnet.group_norm(x, gamma, beta, 2, backend=backend, act_type='gelu')
    with pytest.raises(ValueError, match=r"residual must have data's shape \(2, 4, 3\), "
                                         r"got \(2, 4, 1\)"):
        gn_mxnet.group_norm(x, gamma, beta, 2, backend=backend, residual=mx.nd.ones((2, 4, 1)))
    with pytest.raises(ValueError, match=r"residual dtype must match data \(float32\), "
                                         r"got float64"):
        gn_mxnet.group_norm(x, gamma, beta, 2, backend=backend,
                            residual=mx.nd.ones((2, 4, 3), dtype='float64'))
    with pytest.raises(TypeError, match='residual must be an NDArray'):
        gn_mxnet.group_norm(x, gamma, beta, 2, backend=backend, residual=np.ones((2, 4, 3)))


def test_native_op_refuses_bad_attributes_in_its_words():
    gn_mxnet.load_library()
    x, gamma, beta = mx.nd.ones((2, 4, 3)), mx.nd.ones(4), mx.nd.zeros(4)
    with pytest.raises(mx.base.MXNetError, match="act_type must be one of 'none', 'relu', "
                                                 "'silu', got 'tanh'"):
        mx.nd.GroupNormalization(x, gamma, beta, num_groups=2, act_type='tanh')[0].wait_to_read()
    with pytest.raises(mx.base.MXNetError, match=r"residual must have data's shape \(2, 4, 3\)"):
        mx.nd.GroupNormalization(x, gamma, beta, mx.nd.ones((2, 4)), num_groups=2,
                                 has_residual=1)[0].wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="has_residual must be 0 or 1, got 'True'"):
        mx.nd.GroupNormalization(x, gamma, beta, x, num_groups=2,
                                 has_residual=True)[0].wait_to_read()


@pytest.mark.parametrize('value, want', [(0, False), (1, True), ('0', False), ('1', True)])
def test_has_residual_is_read_by_one_parser(value, want):
    from gn_mxnet.operator.validation import parse_has_residual
    assert parse_has_residual(value) is want


@pytest.mark.parametrize('value', [True, 'True', 'false', 2, '', None])
def test_has_residual_refuses_what_the_native_op_refuses(value):
    """The CustomOp and the ONNX export read a node's has_residual with the parser the C++ op
    mirrors: what one refuses the others refuse, rather than reading it as 0."""
    from gn_mxnet.operator import custom_op
    from gn_mxnet.operator.validation import parse_has_residual
    with pytest.raises(ValueError, match=f"has_residual must be 0 or 1, got '{value}'"):
        parse_has_residual(value)
    with pytest.raises(ValueError, match='has_residual must be 0 or 1'):
        custom_op._GroupNormProp(num_groups='2', has_residual=str(value))


def test_gluon_layer_with_residual_hybridized():
    layer = gn_mxnet.gluon.GroupNorm(2, activation='relu')
    layer.initialize()
    layer.hybridize()
    x, r = mx.nd.array(np.random.randn(2, 4, 3)), mx.nd.array(np.random.randn(2, 4, 3))
    want = ref.fused_forward(x.asnumpy(), np.ones(4), np.zeros(4), 2, act='relu',
                             residual=r.asnumpy())
    np.testing.assert_allclose(layer(x, r).asnumpy(), want, rtol=1e-4, atol=1e-5)
    assert "activation='relu'" in repr(layer)
    with pytest.raises(ValueError, match='act_type must be one of'):
        gn_mxnet.gluon.GroupNorm(2, activation='tanh')


def test_cpu_fused_backward_writes_any_subset_of_its_outputs(native_library):
    """The C ABI (operators/group_norm_kernels.h): dz is recomputed inside the passes, so a
    fused backward asked for dgamma/dbeta only, or d residual only, needs no dx buffer and
    computes what the full call gives for them."""
    import ctypes
    lib = ctypes.CDLL(gn_mxnet.library_path())
    for name in ('gn_cpu_forward_workspace_bytes', 'gn_cpu_backward_workspace_bytes'):
        getattr(lib, name).restype = ctypes.c_size_t
        getattr(lib, name).argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
    lib.gn_cpu_forward.argtypes = ([ctypes.c_int] * 2 + [ctypes.c_void_p] * 7
                                   + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
                                   + [ctypes.c_double, ctypes.c_void_p])
    lib.gn_cpu_backward.argtypes = ([ctypes.c_int] * 2 + [ctypes.c_void_p] * 11
                                    + [ctypes.c_int64] * 4 + [ctypes.c_int] * 2
                                    + [ctypes.c_void_p])
    N, C, S, G, act = 2, 8, 6, 4, build.ACT_CODES['relu']
    f32 = build.DTYPE_CODES['float32']
    rng = np.random.default_rng(3)
    x, dy, r = (rng.standard_normal((N, C, S)).astype(np.float32) for _ in range(3))
    gamma, beta = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    y, mean, rstd = np.empty_like(x), np.empty(N * G, np.float32), np.empty(N * G, np.float32)
    p = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    ws = np.empty(max(lib.gn_cpu_forward_workspace_bytes(N, C, S, G, 0),
                      lib.gn_cpu_backward_workspace_bytes(N, C, S, G, 0)) + 64, np.uint8)
    assert lib.gn_cpu_forward(f32, f32, p(x), p(gamma), p(beta), p(r), p(y), p(mean), p(rstd),
                              N, C, S, G, 0, act, 1e-5, p(ws)) == 0

    def run_backward(out):
        assert lib.gn_cpu_backward(f32, f32, p(dy), p(x), p(gamma), p(beta), p(r), p(mean),
                                   p(rstd), p(out['dx']), p(out['dgamma']), p(out['dbeta']),
                                   p(out['dresidual']), N, C, S, G, 0, act, p(ws)) == 0

    assert_backward_subsets_match_full(run_backward, x, gamma,
                                       ({'dgamma', 'dbeta'}, {'dresidual'}))
