"""The CUDA kernels alone in a shared library, and their C ABI through ctypes, without MXNet:
for benchmarks/gpu_check.py and tests/test_cuda_build.py.

The recipe is gn_mxnet/operator/build.py's cuda_library_plan(): setup.py's nvcc lines for the
shipped library, so what these check is what ships.
"""
import ctypes
import importlib.util
import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_by_path(path, name):
    """The Python file at `path` as a module that sys.modules does not know by `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# By path, as setup.py loads it: GPU hosts run gpu_check.py from a checkout with no gn_mxnet
# installed (and no MXNet).
builder = load_by_path(os.path.join(REPO, "gn_mxnet", "operator", "build.py"),
                       "gn_mxnet_operator_build")


def build_library(output, archs, nvcc=None):
    """Builds the CUDA kernels for `archs` into `output`; returns what nvcc printed."""
    nvcc = nvcc or builder.find_nvcc()
    if nvcc is None:
        raise builder.BuildError("nvcc not found ($NVCC, PATH, /usr/local/cuda/bin/nvcc)")
    with tempfile.TemporaryDirectory() as objects:
        return builder.execute(builder.cuda_library_plan(output, objects, nvcc, archs))


ENTRY_POINTS = ("gn_cuda_forward_workspace_bytes", "gn_cuda_forward",
                "gn_cuda_backward_workspace_bytes", "gn_cuda_backward", "gn_cuda_last_error")


def load_library(path):
    lib = ctypes.CDLL(path)
    i64, vp, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("gn_cuda_forward_workspace_bytes", "gn_cuda_backward_workspace_bytes"):
        fn = getattr(lib, name)
        fn.argtypes = [i64, i64, i64, i64, c_int]
        fn.restype = ctypes.c_size_t
    # operators/group_norm_kernels.h: residual after beta, act after channels_last; backward
    # also takes beta, residual and dresidual.
    lib.gn_cuda_forward.argtypes = [c_int, c_int, vp, vp, vp, vp, vp, vp, vp, i64, i64, i64,
                                    i64, c_int, c_int, ctypes.c_double, vp, vp]
    lib.gn_cuda_forward.restype = c_int
    lib.gn_cuda_backward.argtypes = [c_int, c_int, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp,
                                     i64, i64, i64, i64, c_int, c_int, vp, vp]
    lib.gn_cuda_backward.restype = c_int
    lib.gn_cuda_last_error.argtypes = []
    lib.gn_cuda_last_error.restype = ctypes.c_char_p  # "cudaErrorName: description"
    return lib
