"""The Weight Standardization CUDA kernels' own source (operators/weight_standardization_cuda.cu)
on the CPU through tests/cuda_host_emulation.h (the emulated_cuda fixture shared with
tests/test_cuda_emulated.py): forward and backward against the float64 reference of
tests/test_weight_standardization.py, both conventions, every dtype, rows shorter and longer
than a block, K = 1 and constant rows; bad arguments refused with a status. That checks indexing,
reductions and barriers, not the GPU (docs/gpu.md)."""
import ctypes

import numpy as np
import pytest

from cuda_emulation import FLOAT16, FLOAT32, FLOAT64, NP_DTYPES
from test_weight_standardization import reference

CONVENTIONS = {'qiao': 0, 'timm': 1}  # operators/weight_standardization_kernels.h
TOLERANCE = {FLOAT64: 1e-12, FLOAT32: 2e-6, FLOAT16: 2e-3}
BAD_ARGUMENT, BAD_DTYPE = 4, 1  # GN_STATUS_* of group_norm_kernels.h


def _entries(lib):
    forward, backward = lib.ws_cuda_forward, lib.ws_cuda_backward
    forward.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                        ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p]
    backward.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double,
                         ctypes.c_void_p]
    forward.restype = backward.restype = ctypes.c_int
    return forward, backward


def _run(lib, w, dy, dtype, convention, eps):
    forward, backward = _entries(lib)
    O, K = w.shape[0], w[0].size
    w, dy = np.ascontiguousarray(w), np.ascontiguousarray(dy)
    w_hat, dw = np.empty_like(w), np.empty_like(w)
    code = CONVENTIONS[convention]
    assert forward(dtype, w.ctypes.data, w_hat.ctypes.data, O, K, code, eps, None) == 0
    assert backward(dtype, dy.ctypes.data, w.ctypes.data, dw.ctypes.data, O, K, code, eps,
                    None) == 0
    return w_hat.astype(np.float64), dw.astype(np.float64)


@pytest.mark.parametrize('dtype', [FLOAT32, FLOAT64, FLOAT16])
@pytest.mark.parametrize('convention', sorted(CONVENTIONS))
def test_emulated_kernels_match_reference(emulated_cuda, dtype, convention):
    rng = np.random.default_rng(5)
    eps = 1e-5 if convention == 'qiao' else 1e-6
    # K = 9 and 27 (fewer than a block's 256 threads), 1, 600 (several per thread), 2-D.
    for shape in [(4, 1, 3, 3), (3, 3, 3, 3), (5, 1, 1, 1), (2, 600), (3, 7)]:
        w = (rng.standard_normal(shape) * 0.05 + 0.5).astype(NP_DTYPES[dtype])
        dy = rng.standard_normal(shape).astype(NP_DTYPES[dtype])
        w_hat, dw = _run(emulated_cuda, w, dy, dtype, convention, eps)
        want_hat, want_dw = reference(w, convention, eps, dy.astype(np.float64))
        scale = max(np.abs(want_dw).max(), 1.0)
        assert np.abs(w_hat - want_hat).max() < TOLERANCE[dtype] * max(np.abs(want_hat).max(), 1)
        assert np.abs(dw - want_dw).max() / scale < TOLERANCE[dtype] * 4, shape


def test_emulated_constant_rows_are_defined(emulated_cuda):
    dy = np.array([[1.0, -2.0, 0.5, 4.0]])
    for convention, scale in (('qiao', 1 / 1e-5), ('timm', 1 / np.sqrt(1e-6))):
        eps = 1e-5 if convention == 'qiao' else 1e-6
        w_hat, dw = _run(emulated_cuda, np.full((1, 4), 0.25), dy, FLOAT64, convention, eps)
        assert np.all(w_hat == 0)
        np.testing.assert_allclose(dw, (dy - dy.mean()) * scale, rtol=1e-9)


def test_emulated_entries_refuse_bad_arguments(emulated_cuda):
    forward, _ = _entries(emulated_cuda)
    w = np.ones((2, 3))
    out = np.empty_like(w)
    p, q = w.ctypes.data, out.ctypes.data
    assert forward(FLOAT64, p, q, 2, 3, 2, 1e-5, None) == BAD_ARGUMENT  # unknown convention
    assert forward(FLOAT64, p, q, 2, 3, 0, 0.0, None) == BAD_ARGUMENT   # eps must be > 0
    assert forward(FLOAT64, p, q, 0, 3, 0, 1e-5, None) == BAD_ARGUMENT  # no rows
    assert forward(7, p, q, 2, 3, 0, 1e-5, None) == BAD_DTYPE
