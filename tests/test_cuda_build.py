"""The CUDA sources compile with nvcc wherever nvcc exists, so they never rot.

Uses the exact compile line of benchmarks/gpu_check.py (one arch here to keep CI fast; the
all-arch build is marked slow). Without a GPU it still checks the exported C ABI: symbols,
workspace sizes, status codes, and that a launch reports GN_STATUS_DEVICE_ERROR, not a crash.
Skips only when nvcc is absent; a compile failure fails.
"""
import ctypes
import importlib.util
import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_gpu_check():
    spec = importlib.util.spec_from_file_location(
        "gpu_check", os.path.join(REPO, "benchmarks", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()
NVCC = gpu_check.find_nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, /usr/local/cuda/bin)")

GN_STATUS_OK, GN_STATUS_BAD_DTYPE, GN_STATUS_BAD_SHAPE, GN_STATUS_DEVICE_ERROR = 0, 1, 2, 3
FLOAT32, FLOAT64, FLOAT16 = 0, 1, 2


def _ci_arch():
    archs, _ = gpu_check.build_archs(NVCC)
    return 80 if 80 in archs else archs[0]


def _exported_symbols(path):
    nm = shutil.which("nm")
    if nm is None:
        return None
    out = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def _assert_exports(path):
    symbols = _exported_symbols(path)
    if symbols is not None:
        missing = [name for name in gpu_check.ENTRY_POINTS if name not in symbols]
        assert not missing, "not exported: %s" % missing
        extra = sorted(s for s in symbols if s.startswith("gn_") and s not in gpu_check.ENTRY_POINTS)
        assert not extra, "unexpected gn_* exports: %s" % extra
    lib = ctypes.CDLL(path)  # loads without a driver: cudart is static and binds lazily
    for name in gpu_check.ENTRY_POINTS:
        assert hasattr(lib, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gn_cuda") / "libgn_cuda.so")
    log = gpu_check.build_library(path, [_ci_arch()], nvcc=NVCC)
    return path, log


@pytest.fixture(scope="module")
def lib(built):
    return gpu_check.load_library(built[0])


def _has_gpu():
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/dxg")


def test_compiles_without_warnings_and_exports_entry_points(built):
    path, log = built
    ours = [line for line in log.splitlines()
            if "warning" in line.lower() and "operators" in line]
    assert not ours, "\n".join(ours)
    _assert_exports(path)


@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("shape", [(2, 256, 3136, 32), (128, 2048, 49, 32), (8, 512, 4096, 32),
                                   (16, 96, 1, 8), (1, 8, 70000, 2), (3, 27, 49, 3)])
def test_workspace_bytes_are_sane(lib, shape, cl):
    N, C, S, G = shape
    fwd = lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl)
    bwd = lib.gn_cuda_backward_workspace_bytes(N, C, S, G, cl)
    # At least the per-(n, c) coefficients in double; far below the tensor for real shapes.
    assert fwd >= 2 * N * C * 8 and bwd >= 5 * N * C * 8
    assert fwd % 256 == 0 and bwd % 256 == 0
    bound = 64 * 1024 * 1024 + 40 * N * C * S
    assert fwd < bound and bwd < bound
    # Shape-only: the same numbers every call, and growing with the batch.
    assert lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl) == fwd
    assert lib.gn_cuda_forward_workspace_bytes(2 * N, C, S, G, cl) >= fwd
    assert lib.gn_cuda_backward_workspace_bytes(2 * N, C, S, G, cl) >= bwd


def test_workspace_bytes_for_empty_or_invalid_shapes(lib):
    assert lib.gn_cuda_forward_workspace_bytes(0, 8, 4, 2, 0) == 0
    assert lib.gn_cuda_forward_workspace_bytes(2, 5, 4, 2, 0) == 0  # C % G != 0
    assert lib.gn_cuda_backward_workspace_bytes(2, 8, 4, 0, 1) == 0  # G == 0


FAKE = ctypes.c_void_p(0x10000)  # never dereferenced: these calls return before any launch


def _forward(lib, dtype, param_dtype, N, C, S, G, cl=0):
    return lib.gn_cuda_forward(dtype, param_dtype, FAKE, FAKE, FAKE, FAKE, FAKE, FAKE, N, C, S,
                               G, cl, 1e-5, FAKE, None)


def _backward(lib, dtype, param_dtype, N, C, S, G, cl=0, grads=(FAKE, FAKE, FAKE)):
    return lib.gn_cuda_backward(dtype, param_dtype, FAKE, FAKE, FAKE, FAKE, FAKE, *grads, N, C,
                                S, G, cl, FAKE, None)


@pytest.mark.parametrize("call", [_forward, _backward])
def test_status_codes_before_any_launch(lib, call):
    assert call(lib, 7, 7, 2, 8, 4, 2) == GN_STATUS_BAD_DTYPE
    assert call(lib, FLOAT32, FLOAT16, 2, 8, 4, 2) == GN_STATUS_BAD_DTYPE
    assert call(lib, FLOAT64, FLOAT32, 2, 8, 4, 2) == GN_STATUS_BAD_DTYPE
    assert call(lib, FLOAT32, FLOAT32, 2, 9, 4, 2) == GN_STATUS_BAD_SHAPE
    assert call(lib, FLOAT32, FLOAT32, 2, 8, 4, 0) == GN_STATUS_BAD_SHAPE
    assert call(lib, FLOAT32, FLOAT32, -1, 8, 4, 2) == GN_STATUS_BAD_SHAPE


def test_calls_with_nothing_to_do_return_ok(lib):
    assert _forward(lib, FLOAT32, FLOAT32, 0, 8, 4, 2) == GN_STATUS_OK  # empty batch
    assert _backward(lib, FLOAT32, FLOAT32, 2, 8, 4, 2, grads=(None, None, None)) == GN_STATUS_OK


@pytest.mark.skipif(_has_gpu(), reason="a GPU is present: fake pointers would be launched on")
@pytest.mark.parametrize("call", [_forward, _backward])
@pytest.mark.parametrize("dtypes", [(FLOAT32, FLOAT32), (FLOAT64, FLOAT64), (FLOAT16, FLOAT16),
                                    (FLOAT16, FLOAT32)])
@pytest.mark.parametrize("cl", [0, 1])
def test_launch_without_gpu_reports_device_error(lib, call, dtypes, cl):
    assert call(lib, dtypes[0], dtypes[1], 2, 8, 12, 2, cl) == GN_STATUS_DEVICE_ERROR


@pytest.mark.slow
def test_full_arch_build(tmp_path):
    archs, ptx = gpu_check.build_archs(NVCC)
    path = str(tmp_path / "libgn_cuda_all.so")
    gpu_check.build_library(path, archs, ptx, nvcc=NVCC)
    _assert_exports(path)
    cuobjdump = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if os.access(cuobjdump, os.X_OK):
        listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", path],
                                 capture_output=True, text=True, check=True).stdout
        for arch in archs:
            assert "sm_%d" % arch in listing
        assert "compute_%d" % ptx in listing or "sm_%d.ptx" % ptx in listing
