"""What the C ABI tests of the CPU library and of the emulated CUDA kernels share: a fused
backward asked for only some of its outputs (the others passed as null) must give, for those,
what the full call gives."""
import numpy as np

BACKWARD_OUTPUTS = ('dx', 'dgamma', 'dbeta', 'dresidual')


def assert_backward_subsets_match_full(run_backward, x, gamma, subsets):
    """run_backward(out) calls the ABI's backward with out's arrays, None for a null pointer;
    each asked-for array starts as NaN, so one left unwritten fails."""
    def backward(want):
        out = {name: np.full_like(gamma if name in ('dgamma', 'dbeta') else x, np.nan)
               if name in want else None for name in BACKWARD_OUTPUTS}
        run_backward(out)
        return {name: value for name, value in out.items() if value is not None}

    full = backward(set(BACKWARD_OUTPUTS))
    assert all(np.isfinite(value).all() for value in full.values())
    for subset in subsets:
        for name, value in backward(subset).items():
            np.testing.assert_array_equal(value, full[name], err_msg=f"{name} of {subset}")
