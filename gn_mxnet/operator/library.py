"""Finds and loads the compiled GroupNormalization operator library into MXNet."""
import os
import threading

import mxnet as mx

from . import mixed_precision, op_inputs
from .build import LIBRARY_NAME

CPU_ISA_CHOICES = ('auto', 'generic')  # GN_MXNET_CPU_ISA; the library itself reads it too
_lock = threading.Lock()
_loaded_path = None


class LibraryNotBuiltError(RuntimeError):
    """`load_library()` found no compiled operator library in the package: build it with
    `pip install -e .`, or use backend='custom' or 'ops', which need no library."""


def library_path() -> str:
    """Path of the operator library inside the installed package (it may not exist): setup.py
    builds it into the top of the gn_mxnet package."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package_dir, LIBRARY_NAME)


def load_library() -> str:
    """Load the operator library once; later calls return at once. Returns its path.

    It registers the 'custom' backend's CustomOp first, so that every exported form (native,
    custom, ops) loads after `import gn_mxnet; gn_mxnet.load_library()`, and a custom one even
    where the library is not built (LibraryNotBuiltError is raised after registering).
    """
    global _loaded_path
    # MXNet finds a CustomOp by op_type only once Python registered it, which importing the
    # module does; mx.library.load rebuilds mx.nd/mx.sym but keeps that registry.
    from . import custom_op  # noqa: F401
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        forced = os.environ.get('GN_MXNET_CPU_ISA', 'auto')
        if forced not in CPU_ISA_CHOICES:
            raise ValueError(f"GN_MXNET_CPU_ISA must be one of {', '.join(CPU_ISA_CHOICES)}, "
                             f"got {forced!r}")
        path = library_path()
        if not os.path.isfile(path):
            raise LibraryNotBuiltError(
                f"the GroupNormalization library is not built: {path} is missing. Build it "
                f"with `pip install -e .` (or `python setup.py build_ext --inplace`) in the "
                f"gn-mxnet checkout, with mxnet==1.9.1 installed; or use backend='custom' "
                f"or backend='ops'.")
        with mixed_precision.keeping_amp_wrappers():
            mx.library.load(path, verbose=False)
        op_inputs.install()  # after the load, which rebuilds the op functions
        mixed_precision.register_with_amp()
        _loaded_path = path
        return path


def cpu_isa() -> str:
    """The build of the CPU kernels that runs here: 'avx2' (AVX2, FMA, F16C) or 'generic'.
    GN_MXNET_CPU_ISA=generic, set before the library loads, forces 'generic'."""
    import ctypes
    library = ctypes.CDLL(load_library())
    library.gn_cpu_isa.restype = ctypes.c_char_p
    return library.gn_cpu_isa().decode()


def is_loaded() -> bool:
    return _loaded_path is not None
