"""Groups of one element are exact, groups of two and three match the reference.

With one element per group (M = 1: G = C and no spatial extent) x - mean is exactly 0, so
y = beta, dx = 0 and dgamma = 0 exactly, whatever x, gamma and dy are. A kernel that rounds
the cancelling terms of dx differently leaves a residue of about rstd·|gamma·dy|·ulp, up to
316·ulp with the default eps: 6e-5 in float32, which is a wrong gradient, not a rounding of a
right one. Every backend and both CPU builds must return the exact zeros (the generic build
reruns this file in a subprocess; the CUDA kernels are checked under the host emulation in
tests/test_cuda_emulated.py).
"""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

import gn_mxnet
from gn_checks import check_against_reference, make_inputs, run, run_symbolic

BACKENDS = gn_mxnet.BACKENDS
DTYPES = ('float32', 'float64', 'float16')

# (shape, axis) with M = 1 when G = C. The last two reach the kernels' parallel paths: more
# than one thread's grain of groups (channels-first), and channels-last with fewer samples
# than threads, whose sums are split across threads.
ONE_ELEMENT = [
    ((1, 32, 1, 1), 1),
    ((3, 16, 1, 1), 1),
    ((4, 64), 1),           # 2-D (N, C): the same bytes in either layout
    ((3, 1, 1, 16), -1),    # channels-last
    ((2, 1, 24), -1),
    ((40, 2048), 1),        # 81,920 groups: several threads
    ((1, 1, 80000), -1),    # one sample, channels-last: sums split across threads
]
# (offset, spread): x far from zero, where float32 rounds its mean the most, and near zero.
LOCATIONS = [(1000.0, 2.0), (0.0, 1e-3), (-3.0, 50.0)]


def _per_channel(values, shape, axis):
    """(C,) values broadcast over a tensor of `shape` with channel axis `axis`."""
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(values.reshape(view), shape)


def _one_element_cases():
    for backend, (shape, axis), dtype, (offset, spread) in itertools.product(
            BACKENDS, ONE_ELEMENT, DTYPES, LOCATIONS):
        if backend == 'custom' and np.prod(shape) > 10000:
            continue  # the NumPy CustomOp has no parallel paths; big shapes only cost time
        if dtype == 'float16' and abs(offset) + 4 * spread > 2000:
            continue  # float16 cannot hold 1000 + a spread of 2 apart from its rounding
        yield backend, shape, axis, dtype, offset, spread


@pytest.mark.parametrize('backend, shape, axis, dtype, offset, spread',
                         list(_one_element_cases()))
def test_one_element_groups_are_exact(native_library, backend, shape, axis, dtype, offset,
                                      spread):
    groups = shape[axis]
    x, dy, gamma, beta = make_inputs(shape, axis, dtype, seed=len(shape) + groups,
                                     offset=offset, spread=spread)
    y, dx, dgamma, dbeta = run(backend, x, gamma, beta, dy, groups, axis)
    # y is beta rounded to the data's dtype, exactly.
    np.testing.assert_array_equal(y, _per_channel(beta, shape, axis).astype(x.dtype))
    assert np.abs(dx.astype(np.float64)).max() == 0.0, 'dx of a one-element group'
    assert np.abs(dgamma.astype(np.float64)).max() == 0.0, 'dgamma of a one-element group'
    reduce_axes = tuple(i for i in range(len(shape)) if i != axis % len(shape))
    np.testing.assert_allclose(dbeta.astype(np.float64),
                               dy.astype(np.float64).sum(axis=reduce_axes),
                               rtol={'float16': 2e-3}.get(dtype, 1e-5), atol=1e-6)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, axis', [((4, 64), 1), ((3, 1, 1, 16), -1)])
def test_one_element_groups_are_exact_with_float32_params(native_library, backend, shape, axis):
    groups = shape[axis]
    x, dy, gamma, beta = make_inputs(shape, axis, 'float16', 'float32', seed=7, offset=30.0)
    y, dx, dgamma, _ = run(backend, x, gamma, beta, dy, groups, axis)
    np.testing.assert_array_equal(y, _per_channel(beta, shape, axis).astype('float16'))
    assert not dx.any() and not dgamma.any()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('dtype', DTYPES)
def test_one_element_groups_are_exact_in_a_bound_symbol(native_library, backend, dtype):
    shape = (3, 8, 1)
    x, dy, gamma, beta = make_inputs(shape, 1, dtype, seed=5, offset=100.0, spread=3.0)
    y, dx, dgamma, _ = run_symbolic(backend, x, gamma, beta, dy, 8, 1)
    np.testing.assert_array_equal(y, _per_channel(beta, shape, 1).astype(x.dtype))
    assert not dx.any() and not dgamma.any()


# Groups of two and three elements: D x S with D or S = 1, both layouts, every dtype, data far
# from zero and near-constant, against the float64 reference at the usual tolerances.
SMALL = [((3, 8), 4, 1), ((2, 6, 1), 2, 1), ((2, 4, 3), 4, 1), ((2, 3, 1, 1), 1, 1),
         ((2, 2, 4), 4, -1), ((3, 3, 1, 6), 2, -1), ((2, 1, 3, 5), 5, -1)]


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('shape, groups, axis', SMALL)
@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('offset, spread', [(0.0, 2.0), (1000.0, 2.0), (3.0, 1e-3)])
def test_two_and_three_element_groups_match_reference(native_library, backend, shape, groups,
                                                      axis, dtype, offset, spread):
    if dtype == 'float16' and offset > 100:
        spread = 8.0  # float16 steps are 0.5 at 1000: a spread of 2 would be 4 values
    check_against_reference(backend, shape, groups, axis, dtype, offset=offset, spread=spread)


@pytest.mark.skipif(os.environ.get('GN_MXNET_CPU_ISA') == 'generic',
                    reason='this is the generic build rerunning the file')
def test_generic_build_is_exact_too(native_library):
    tests = os.path.dirname(os.path.abspath(__file__))
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', __file__,
         '-k', 'native and not generic'],
        env=dict(os.environ, GN_MXNET_CPU_ISA='generic'), capture_output=True, text=True,
        timeout=600, cwd=os.path.dirname(tests))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert ' passed' in done.stdout and ' failed' not in done.stdout
