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
