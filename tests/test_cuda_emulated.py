"""The CUDA kernels' own source on the CPU (tests/cuda_emulation.py): exact where the math is
exact, and small groups against the float64 reference."""
import numpy as np
import pytest

import cuda_emulation
from cuda_emulation import FLOAT16, FLOAT32, FLOAT64

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
