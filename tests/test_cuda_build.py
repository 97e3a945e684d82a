"""The CUDA sources compile with nvcc wherever nvcc exists, so they never rot.

Compiles them with setup.py's nvcc lines (gn_mxnet/operator/build.py, through
benchmarks/cuda_build.py; one arch here to keep CI fast, the all-arch build is marked slow;
test_build_recipe.py checks the lines are setup.py's). Without a GPU it still checks the
exported C ABI: symbols, workspace sizes, status codes, and that a launch reports
GN_STATUS_DEVICE_ERROR, not a crash. The nvcc tests skip only when nvcc is absent; a compile
failure fails.

It also runs the kernels' own source on the CPU through tests/cuda_host_emulation.h (g++ only)
and compares them with tests/gn_reference.py (float64, docs/design.md §2). That checks indexing,
reductions and barriers, not the GPU compiler or hardware: benchmarks/gpu_check.py does that.
"""
import ctypes
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gn_reference as ref
from build_modules import NO_NVCC, NVCC, REPO, builder, ci_arch, cuda_build, needs_nvcc

GN_STATUS_OK, GN_STATUS_BAD_DTYPE, GN_STATUS_BAD_SHAPE, GN_STATUS_DEVICE_ERROR = (
    builder.STATUS_CODES[name] for name in ("ok", "bad_dtype", "bad_shape", "device_error"))
FLOAT32, FLOAT64, FLOAT16 = (
    builder.DTYPE_CODES[name] for name in ("float32", "float64", "float16"))


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
        missing = [name for name in cuda_build.ENTRY_POINTS if name not in symbols]
        assert not missing, "not exported: %s" % missing
        extra = sorted(s for s in symbols if s.startswith("gn_") and s not in cuda_build.ENTRY_POINTS)
        assert not extra, "unexpected gn_* exports: %s" % extra
    lib = ctypes.CDLL(path)  # loads without a driver: cudart is static and binds lazily
    for name in cuda_build.ENTRY_POINTS:
        assert hasattr(lib, name)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if NVCC is None:
        pytest.skip(NO_NVCC)
    path = str(tmp_path_factory.mktemp("gn_cuda") / "libgn_cuda.so")
    log = cuda_build.build_library(path, [ci_arch()], nvcc=NVCC)
    return path, log


@pytest.fixture(scope="module")
def lib(built):
    return cuda_build.load_library(built[0])


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
    assert fwd >= 3 * N * C * 8 and bwd >= 6 * N * C * 8
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
@needs_nvcc
def test_full_arch_build(tmp_path):
    archs = builder.cuda_archs(NVCC)
    ptx = builder.ptx_arch(archs)
    path = str(tmp_path / "libgn_cuda_all.so")
    cuda_build.build_library(path, archs, nvcc=NVCC)
    _assert_exports(path)
    cuobjdump = shutil.which("cuobjdump") or "/usr/local/cuda/bin/cuobjdump"
    if os.access(cuobjdump, os.X_OK):
        listing = subprocess.run([cuobjdump, "--list-elf", "--list-ptx", path],
                                 capture_output=True, text=True, check=True).stdout
        for arch in archs:
            assert "sm_%d" % arch in listing
        assert "compute_%d" % ptx in listing or "sm_%d.ptx" % ptx in listing


# ---- the kernels' source on the CPU --------------------------------------------------------

EMULATION_HEADER = os.path.join(REPO, "tests", "cuda_host_emulation.h")
LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)[\s\\]*<<<(.*?)>>>\((.*?)\);", re.S)


def _split_top_level(text):
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "(<"
        depth -= ch in ")>"
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()]


def _host_source(text):
    """Rewrites launches and dynamic shared memory for cuda_host_emulation.h; counts launches."""
    text = text.replace("extern __shared__ __align__(16) unsigned char smem_raw[];",
                        "unsigned char* smem_raw = ::emu::dynamic_smem();")

    def launch(match):
        config = _split_top_level(match.group(2))
        smem = config[2] if len(config) > 2 else "0"
        args = match.group(3).replace("\\\n", " ")
        return "::emu::launch(%s, %s, %s, [&]() { %s(%s); });" % (
            config[0], config[1], smem, match.group(1), args)

    return LAUNCH.subn(launch, text)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None or not sys.platform.startswith("linux"):
        pytest.skip("the emulation needs g++ and glibc's ucontext")
    work = tmp_path_factory.mktemp("gn_cuda_emulated")
    probe = work / "probe.cc"
    probe.write_text("_Float16 h = 1; int main() { return static_cast<int>(h) - 1; }\n")
    if subprocess.run([gxx, "-std=c++17", "-c", str(probe), "-o", str(work / "probe.o")],
                      capture_output=True).returncode != 0:
        pytest.skip("this g++ has no _Float16 (GCC >= 12 on x86-64 / aarch64 has it)")
    shim = work / "shim"
    shim.mkdir()
    for name in ("cuda_runtime.h", "cuda_fp16.h"):
        (shim / name).write_text('#include "%s"\n' % EMULATION_HEADER)
    units, launches = [], 0
    for name in sorted(os.listdir(builder.OPERATORS)):
        if not name.endswith((".cu", ".cuh", ".h")):
            continue
        with open(os.path.join(builder.OPERATORS, name)) as f:
            text, count = _host_source(f.read())
        launches += count
        target = work / (name[:-3] + ".cc" if name.endswith(".cu") else name)
        target.write_text(text)
        if name.endswith(".cu"):
            units.append(str(target))
    assert units and launches >= 10, "no CUDA sources or launches found to emulate"
    path = str(work / "libgn_cuda_emulated.so")
    cmd = [gxx, "-O1", "-std=c++17", "-fPIC", "-shared", "-Wno-unknown-pragmas",
           "-I", str(shim), "-I", str(work)] + units + ["-o", path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return cuda_build.load_library(path)


NP_DTYPES = {FLOAT32: np.float32, FLOAT64: np.float64, FLOAT16: np.float16}


def _reference(x, dy, gamma, beta, G, eps):
    """tests/gn_reference.py on (N, C, S) inputs, mean and rstd flat like the kernels'."""
    mean, rstd = ref.moments(x, G, eps)
    dx, dgamma, dbeta = ref.backward(dy, x, gamma, G, eps)
    return dict(y=ref.forward(x, gamma, beta, G, eps), mean=mean.ravel(), rstd=rstd.ravel(),
                dx=dx, dgamma=dgamma, dbeta=dbeta)


def _array(values, dtype, misaligned):
    """A C-contiguous copy; `misaligned` puts it one element past an aligned address."""
    flat = np.empty(values.size + 1, dtype=dtype)
    out = flat[1:] if misaligned else flat[:-1]
    out[...] = values.ravel()
    return out


def _run_emulated(lib, x64, dy64, gamma64, beta64, G, cl, dtypes, misaligned=False, eps=1e-5):
    """Runs the emulated forward and backward on (N, C, S) float64 inputs cast to `dtypes`;
    returns the kernels' results and the float64 reference of the cast inputs (both
    channels-first), and the size of the terms each gradient is summed from."""
    N, C, S = x64.shape
    dtype, param_dtype = dtypes
    data_t, param_t = NP_DTYPES[dtype], NP_DTYPES[param_dtype]
    acc_t = np.float64 if dtype == FLOAT64 else np.float32

    def stored(a):  # the kernel's layout: (N, C, S) or (N, S, C)
        return a.transpose(0, 2, 1) if cl else a

    x = _array(stored(x64.astype(data_t)), data_t, misaligned)
    dy = _array(stored(dy64.astype(data_t)), data_t, misaligned)
    gamma, beta = gamma64.astype(param_t), beta64.astype(param_t)
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, rstd = np.empty(N * G, acc_t), np.empty(N * G, acc_t)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
    ws_f = np.empty(lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
    ws_b = np.empty(lib.gn_cuda_backward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
    p = lambda a: a.ctypes.data  # noqa: E731
    assert lib.gn_cuda_forward(dtype, param_dtype, p(x), p(gamma), p(beta), p(y), p(mean),
                               p(rstd), N, C, S, G, cl, eps, p(ws_f), None) == 0
    assert lib.gn_cuda_backward(dtype, param_dtype, p(dy), p(x), p(gamma), p(mean), p(rstd),
                                p(dx), p(dgamma), p(dbeta), N, C, S, G, cl, p(ws_b), None) == 0

    def channels_first(a):
        a = a.astype(np.float64).reshape((N, S, C) if cl else (N, C, S))
        return a.transpose(0, 2, 1) if cl else a

    xr, dyr = channels_first(x), channels_first(dy)
    ref = _reference(xr, dyr, gamma.astype(np.float64), beta.astype(np.float64), G, eps)
    # A sum whose terms cancel is only as accurate as its terms' size times the working
    # precision, whatever the kernel (tests/test_group_norm.py's term_scales, same idea).
    scale_c = np.repeat(ref["rstd"].reshape(N, G), C // G, 1)[..., None] * gamma[None, :, None]
    terms = {"dx": np.abs(scale_c * dyr).max(),
             "dgamma": np.sqrt((dyr ** 2).sum((0, 2))).max()}
    terms["dbeta"] = terms["dgamma"]
    ours = dict(y=channels_first(y), mean=mean, rstd=rstd, dx=channels_first(dx),
                dgamma=dgamma, dbeta=dbeta)
    return ours, ref, terms


def _relative_errors(ours, ref, terms):
    errors = {}
    for name, want in ref.items():
        scale = max(np.abs(want).max(), terms.get(name, 0.0), 1e-30)
        errors[name] = np.abs(ours[name].astype(np.float64) - want).max() / scale
    return errors


@pytest.mark.parametrize("misaligned", [False, True])
@pytest.mark.parametrize("dtypes", [(FLOAT32, FLOAT32), (FLOAT64, FLOAT64), (FLOAT16, FLOAT16),
                                    (FLOAT16, FLOAT32)])
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C,S,G", [
    (2, 32, 64, 8),    # packed loads in both layouts
    (2, 6, 35, 3),     # odd sizes: scalar paths
    (3, 16, 1, 4),     # 2-D (N, C)
    (2, 8, 1, 8),      # one element per group
    (1, 8, 5000, 2),   # few long groups: reductions split over many blocks
    (19, 8, 3, 2),     # a batch that is not a multiple of the parameter-gradient rows
])
def test_emulated_kernels_match_reference(emulated, N, C, S, G, cl, dtypes, misaligned):
    rng = np.random.default_rng(N * 1000 + C * 10 + S + cl)
    x64 = rng.standard_normal((N, C, S)) * 2.0 + 0.5
    dy64 = rng.standard_normal((N, C, S))
    gamma64 = rng.standard_normal(C) * 0.5 + 1.0
    beta64 = rng.standard_normal(C)
    errors = _relative_errors(*_run_emulated(emulated, x64, dy64, gamma64, beta64, G, cl, dtypes,
                                             misaligned))
    tol = {FLOAT32: 1e-5, FLOAT64: 1e-10, FLOAT16: 1e-2}[dtypes[0]]
    for name, err in errors.items():
        assert err <= tol, "%s: rel err %.3g > %.g" % (name, err, tol)


# float32 groups whose mean is large next to their spread: a mean rounded to float32 is off by
# up to half an ulp of |mean|, which rstd (up to 1/sqrt(eps) when var << eps) turns into errors
# far above 1e-5 in y, dx and dgamma unless the kernels recover that rounding.
@pytest.mark.parametrize("offset,spread", [(3.0, 1e-3), (1000.0, 2.0)])
@pytest.mark.parametrize("cl", [0, 1])
@pytest.mark.parametrize("N,C,S,G", [
    (2, 32, 64, 8),    # packed loads
    (2, 6, 35, 3),     # scalar paths
    (3, 4, 1, 2),      # groups of two elements (two channels)
    (2, 4, 2, 4),      # groups of two elements (two positions)
    (2, 8, 1, 8),      # one element per group
    (1, 8, 5000, 2),   # forward: 10 blocks per group channels-first, 157 row chunks
                       # channels-last; backward: 5 and 157 chunks
])
def test_emulated_float32_precision_far_from_zero(emulated, N, C, S, G, cl, offset, spread):
    rng = np.random.default_rng(7 + N * 1000 + C * 10 + S + cl)
    x64 = rng.standard_normal((N, C, S)) * spread + offset
    dy64 = rng.standard_normal((N, C, S))
    gamma64 = rng.standard_normal(C) * 0.5 + 1.0
    beta64 = rng.standard_normal(C)
    ours, ref, terms = _run_emulated(emulated, x64, dy64, gamma64, beta64, G, cl,
                                     (FLOAT32, FLOAT32))
    errors = _relative_errors(ours, ref, terms)
    # The mean output is the group mean rounded to float32: half an ulp off at most, plus the
    # float32 error of a mean taken relative to a pivot within a few spreads of it.
    mean_ulps = (np.abs(ours["mean"] - ref["mean"]) / np.spacing(np.abs(ref["mean"]).astype(
        np.float32)).astype(np.float64)).max()
    report = ", ".join("%s %.2g" % kv for kv in errors.items()) + ", mean %.2g ulp" % mean_ulps
    print("\nN=%d C=%d S=%d G=%d cl=%d offset=%g spread=%g: %s"
          % (N, C, S, G, cl, offset, spread, report))
    assert mean_ulps <= 0.6, report
    for name, err in errors.items():
        assert err <= 1e-5, "%s: rel err %.3g > 1e-5 (%s)" % (name, err, report)
