"""The CUDA kernels' own source on the CPU (tests/cuda_emulation.py): exact where the math is
exact, small groups against the float64 reference, and a failed launch named in CUDA's words
(gn_cuda_last_error, which the operator appends to its MXNetError)."""
import ctypes
import threading

import numpy as np
import pytest

import cuda_emulation
from abi_checks import assert_backward_subsets_match_full
from cuda_emulation import ACT_CODES, FLOAT16, FLOAT32, FLOAT64

DTYPES = [(FLOAT32, FLOAT32), (FLOAT64, FLOAT64), (FLOAT16, FLOAT16), (FLOAT16, FLOAT32)]
TOLERANCE = {FLOAT32: 1e-5, FLOAT64: 1e-10, FLOAT16: 1e-2}


def _inputs(N, C, S, offset, spread, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, C, S)) * spread + offset, rng.standard_normal((N, C, S)),
            rng.standard_normal(C) * 0.5 + 1.0, rng.standard_normal(C))


# One element per group (G = C, S = 1): x - mean is exactly 0, so y = beta, dx = 0 and
# dgamma = 0 exactly. Rounding rstd*gamma*dy and rstd*mean_g(gamma*dy) apart left
# rstd*|gamma*dy|*ulp in dx (tests/test_small_groups.py has the same for every backend).
@pytest.mark.parametrize("offset,spread", [(1000.0, 2.0), (0.0, 1e-3)])
@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C", [(2, 8), (1, 32), (3, 5), (2, 256)])
def test_one_element_groups_are_exact(emulated_cuda, N, C, cl, dtypes, offset, spread):
    x64, dy64, gamma64, beta64 = _inputs(N, C, 1, offset, spread, N * 100 + C + cl)
    ours, _, _ = cuda_emulation.run(emulated_cuda, x64, dy64, gamma64, beta64, C, cl, dtypes)
    data_t, param_t = (cuda_emulation.NP_DTYPES[d] for d in dtypes)
    beta = beta64.astype(param_t).astype(data_t).astype(np.float64)
    np.testing.assert_array_equal(ours["y"], np.broadcast_to(beta[None, :, None], (N, C, 1)))
    assert np.abs(ours["dx"]).max() == 0.0, "dx of a one-element group"
    assert np.abs(ours["dgamma"].astype(np.float64)).max() == 0.0, "dgamma"


@pytest.mark.parametrize("offset,spread", [(0.0, 2.0), (1000.0, 2.0), (3.0, 1e-3)])
@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C,S,G", [(3, 8, 1, 4), (2, 6, 1, 2), (2, 4, 3, 4), (2, 3, 2, 3)])
def test_two_and_three_element_groups_match_reference(emulated_cuda, N, C, S, G, cl, dtypes,
                                                      offset, spread):
    if dtypes[0] == FLOAT16 and offset > 100:
        spread = 8.0  # float16 steps are 0.5 at 1000
    inputs = _inputs(N, C, S, offset, spread, N * 1000 + C * 10 + S + cl)
    errors = cuda_emulation.relative_errors(
        *cuda_emulation.run(emulated_cuda, *inputs, G, cl, dtypes))
    for name, err in errors.items():
        assert err <= TOLERANCE[dtypes[0]], "%s: rel err %.3g" % (name, err)


# The fused form y = act(GN(x) + residual): the residual add and the activation in the
# elementwise pass, dz = dy * act'(z) recomputed in the backward, d residual = dz.
@pytest.mark.parametrize("act", ["none", "relu", "silu"])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("dtypes", DTYPES)
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C,S,G", [(2, 8, 6, 4), (1, 16, 8, 2)])
def test_fused_matches_reference(emulated_cuda, N, C, S, G, cl, dtypes, act, with_residual):
    x64, dy64, gamma64, beta64 = _inputs(N, C, S, 0.5, 2.0, N * 7 + C + S + cl)
    residual = np.random.default_rng(C + S).standard_normal((N, C, S)) if with_residual else None
    ours, ref, terms = cuda_emulation.run(emulated_cuda, x64, dy64, gamma64, beta64, G, cl,
                                          dtypes, act=act, residual64=residual)
    assert ("dresidual" in ours) == with_residual
    for name, err in cuda_emulation.relative_errors(ours, ref, terms).items():
        assert err <= TOLERANCE[dtypes[0]], "%s: rel err %.3g" % (name, err)


# Huge |x| (tests/test_magnitudes.py for the CPU): the squares overflow, so the finalize block
# recomputes its group scaled (a (1, 4, 1024) group is also split over two moments blocks), and
# the backward's x term is (B/rstd)*((x - mean)*rstd). Reported: 1e19 float32 gave y = 0,
# 1e155 float64 y = NaN.
@pytest.mark.parametrize("dtype,magnitude", [(FLOAT32, 1e19), (FLOAT32, 1e30), (FLOAT64, 1e155),
                                             (FLOAT64, 1e300)])
@pytest.mark.parametrize("act,with_residual", [("none", False), ("silu", True)])
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C,S,G", [(2, 6, 5, 3), (1, 4, 1024, 1)])
def test_huge_inputs_match_reference(emulated_cuda, N, C, S, G, cl, act, with_residual, dtype,
                                     magnitude):
    x64, dy64, gamma64, beta64 = _inputs(N, C, S, magnitude, magnitude, N + C + S + cl)
    residual = np.random.default_rng(S).standard_normal((N, C, S)) if with_residual else None
    ours, ref, terms = cuda_emulation.run(emulated_cuda, x64, dy64, gamma64, beta64, G, cl,
                                          (dtype, dtype), act=act, residual64=residual)
    for name, err in cuda_emulation.relative_errors(ours, ref, terms).items():
        assert err <= TOLERANCE[dtype], "%s: rel err %.3g" % (name, err)


def test_fused_refuses_an_unknown_act(emulated_cuda):
    lib, bad = emulated_cuda, max(ACT_CODES.values()) + 1
    x = np.ones((2, 4, 3), np.float32)
    p = lambda a: a.ctypes.data  # noqa: E731
    status = lib.gn_cuda_forward(FLOAT32, FLOAT32, p(x), p(x), p(x), None, p(x), p(x), p(x),
                                 2, 4, 3, 2, 0, bad, 1e-5, p(x), None)
    assert status == cuda_emulation.builder.STATUS_CODES["bad_argument"]
    status = lib.gn_cuda_backward(FLOAT32, FLOAT32, p(x), p(x), p(x), p(x), None, p(x), p(x),
                                  p(x), p(x), p(x), None, 2, 4, 3, 2, 0, bad, p(x), None)
    assert status == cuda_emulation.builder.STATUS_CODES["bad_argument"]


@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("act", ["relu", "silu"])
def test_fused_backward_writes_any_subset_of_its_outputs(emulated_cuda, cl, act):
    """dz is recomputed inside the passes (no staging buffer), so a fused backward asked for
    dgamma/dbeta only, or d residual only, computes what the full call gives for them."""
    lib = emulated_cuda
    N, C, S, G = 2, 8, 6, 4
    rng = np.random.default_rng(5 + cl)
    x, dy, r = (rng.standard_normal((N, C, S)).astype(np.float32) for _ in range(3))
    gamma, beta = rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32)
    mean, rstd = np.empty(N * G, np.float32), np.empty(N * G, np.float32)
    p = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    code = ACT_CODES[act]
    ws_f = np.empty(lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
    y = np.empty_like(x)
    assert lib.gn_cuda_forward(FLOAT32, FLOAT32, p(x), p(gamma), p(beta), p(r), p(y), p(mean),
                               p(rstd), N, C, S, G, cl, code, 1e-5, p(ws_f), None) == 0

    def run_backward(out):
        ws = np.empty(lib.gn_cuda_backward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
        assert lib.gn_cuda_backward(FLOAT32, FLOAT32, p(dy), p(x), p(gamma), p(beta), p(r),
                                    p(mean), p(rstd), p(out["dx"]), p(out["dgamma"]),
                                    p(out["dbeta"]), p(out["dresidual"]), N, C, S, G, cl, code,
                                    p(ws), None) == 0

    assert_backward_subsets_match_full(run_backward, x, gamma,
                                       ({"dgamma", "dbeta"}, {"dresidual"}, {"dx"}))


# ---- a failed launch names its CUDA error (gn_cuda_last_error) -----------------------------

LAUNCH_OUT_OF_RESOURCES, INVALID_CONFIGURATION = 701, 9  # CUDA's cudaError_t codes
DEVICE_ERROR = cuda_emulation.builder.STATUS_CODES["device_error"]
WORDS = {LAUNCH_OUT_OF_RESOURCES: b"cudaErrorLaunchOutOfResources: too many resources "
                                  b"requested for launch",
         INVALID_CONFIGURATION: b"cudaErrorInvalidConfiguration: invalid configuration argument"}


def _failing_call(lib, backward, error):
    """One forward or backward call on real buffers whose first launch fails with `error`."""
    N, C, S, G = 2, 8, 6, 2
    x, dy, y, dx = (np.ones((N, C, S), np.float32) for _ in range(4))
    gamma, beta, dgamma, dbeta = (np.ones(C, np.float32) for _ in range(4))
    mean, rstd = np.zeros(N * G, np.float32), np.ones(N * G, np.float32)
    size = (lib.gn_cuda_backward_workspace_bytes if backward
            else lib.gn_cuda_forward_workspace_bytes)(N, C, S, G, 0)
    ws = np.empty(size, np.uint8)
    p = lambda a: a.ctypes.data  # noqa: E731
    lib.emu_fail_next_launch.argtypes = [ctypes.c_int]
    lib.emu_fail_next_launch(error)
    if backward:
        return lib.gn_cuda_backward(FLOAT32, FLOAT32, p(dy), p(x), p(gamma), p(beta), None,
                                    p(mean), p(rstd), p(dx), p(dgamma), p(dbeta), None, N, C,
                                    S, G, 0, ACT_CODES['none'], p(ws), None)
    return lib.gn_cuda_forward(FLOAT32, FLOAT32, p(x), p(gamma), p(beta), None, p(y), p(mean),
                               p(rstd), N, C, S, G, 0, ACT_CODES['none'], 1e-5, p(ws),
                               None)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("error", sorted(WORDS))
def test_failed_launch_reports_the_cuda_error(emulated_cuda, backward, error):
    assert _failing_call(emulated_cuda, backward, error) == DEVICE_ERROR
    assert emulated_cuda.gn_cuda_last_error() == WORDS[error]


def test_cuda_error_is_kept_per_thread(emulated_cuda):
    """Each thread reads the error of its own last failed call, not another thread's later
    one. (The threads run one after the other: the emulation itself is single-threaded.)"""
    seen = {}

    def fail_and_read(error, then=None):
        _failing_call(emulated_cuda, False, error)
        if then is not None:
            then.start()
            then.join()
        seen[error] = emulated_cuda.gn_cuda_last_error()

    other = threading.Thread(target=fail_and_read, args=(INVALID_CONFIGURATION,))
    first = threading.Thread(target=fail_and_read, args=(LAUNCH_OUT_OF_RESOURCES, other))
    first.start()
    first.join()
    assert seen == {error: WORDS[error] for error in WORDS}
