"""A CPU call whose workspace is beyond lib_api's int-sized allocator runs, rather than failing.

It used to fail in forward with "workspace of 2147483664 bytes exceeds lib_api's 2 GiB limit",
after MXNet had queued it, and MXNet 1.9 passes such a run-time failure to the next ops that
share the failed op's temp space: once the first error was raised, a later mx.nd.sort (or
GroupNormalization) returned unwritten memory, with no error (docs/design.md §3). The CPU
kernels now take a workspace of their own beyond that size.
"""
import ctypes

import mxnet as mx
import numpy as np
import pytest

import gn_mxnet

# (N, 1) float16 data with one group: one element per group, so y = beta and dx = 0 exactly;
# the forward and backward workspaces are 24 bytes a group, 2,147,483,664 bytes here.
N = 89478486
INT_MAX = 2 ** 31 - 1


@pytest.mark.slow
def test_workspace_beyond_lib_api_limit_runs_on_the_cpu(native_library):
    kernels = ctypes.CDLL(gn_mxnet.library_path())
    for name in ('gn_cpu_forward_workspace_bytes', 'gn_cpu_backward_workspace_bytes'):
        size = getattr(kernels, name)
        size.restype = ctypes.c_size_t
        size.argtypes = [ctypes.c_int64] * 4 + [ctypes.c_int]
        assert size(N, 1, 1, 1, 0) > INT_MAX, name  # this case does need the large workspace
    x = mx.nd.random.normal(3.0, 2.0, shape=(N, 1), dtype='float16')
    gamma = mx.nd.array([1.5], dtype='float16')
    beta = mx.nd.array([-0.25], dtype='float16')
    x.attach_grad()
    gamma.attach_grad()
    with mx.autograd.record():
        y = gn_mxnet.group_norm(x, gamma, beta, 1)
    y.backward(mx.nd.ones_like(y))
    assert (y == beta).min().asscalar() == 1  # every y is beta exactly
    assert (x.grad == 0).min().asscalar() == 1
    assert gamma.grad.asscalar() == 0
    sorted_values = mx.nd.sort(mx.nd.array(np.arange(20, 0, -1, dtype='f4'))).asnumpy()
    np.testing.assert_array_equal(sorted_values, np.arange(1, 21))
