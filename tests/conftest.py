import os
import sys

import pytest

# The tests import their helpers (gn_reference, test_data) by module name.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def native_library():
    """The built operator library; the suite fails (not skips) when it is missing."""
    import gn_mxnet
    return gn_mxnet.load_library()


@pytest.fixture(scope='session')
def emulated_cuda(tmp_path_factory):
    """The CUDA kernels' source built for the CPU (tests/cuda_emulation.py), once a session."""
    import cuda_emulation
    return cuda_emulation.build(tmp_path_factory.mktemp('gn_cuda_emulated'))
