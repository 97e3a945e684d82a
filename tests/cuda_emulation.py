"""The CUDA kernels' own source run on the CPU through tests/cuda_host_emulation.h (g++ only),
and the float64 reference of what they compute: for tests/test_cuda_build.py and
tests/test_cuda_emulated.py, which share one build of it (conftest.py's emulated_cuda).

That checks indexing, reductions and barriers, not the GPU compiler or hardware:
benchmarks/gpu_check.py does that.
"""
import os
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import gn_reference as ref
from build_modules import REPO, builder, cuda_build

FLOAT32, FLOAT64, FLOAT16 = (
    builder.DTYPE_CODES[name] for name in ("float32", "float64", "float16"))
ACT_CODES = builder.ACT_CODES

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


def _fused_multiply_add():
    """g++ flags that fuse a*b + c into one rounding where this CPU can, as nvcc does by default
    (--fmad=true): arithmetic that is exact only while unfused shows here too."""
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
        return ["-mfma", "-ffp-contract=fast"] if "fma" in flags else []
    return ["-ffp-contract=fast"]


def build(work):
    """The emulated library built in the directory `work`, loaded with cuda_build's
    argument types; skips where g++ cannot build it."""
    gxx = shutil.which("g++")
    if gxx is None or not sys.platform.startswith("linux"):
        pytest.skip("the emulation needs g++ and glibc's ucontext")
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
           *_fused_multiply_add(), "-I", str(shim), "-I", str(work)] + units + ["-o", path]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]
    return cuda_build.load_library(path)


NP_DTYPES = {FLOAT32: np.float32, FLOAT64: np.float64, FLOAT16: np.float16}


def reference(x, dy, gamma, beta, G, eps, act="none", residual=None):
    """tests/gn_reference.py on (N, C, S) inputs, mean and rstd flat like the kernels'; with a
    residual, its gradient too."""
    mean, rstd = ref.moments(x, G, eps)
    dx, dgamma, dbeta, dresidual = ref.fused_backward(dy, x, gamma, beta, G, eps, 1, act,
                                                      residual)
    out = dict(y=ref.fused_forward(x, gamma, beta, G, eps, 1, act, residual), mean=mean.ravel(),
               rstd=rstd.ravel(), dx=dx, dgamma=dgamma, dbeta=dbeta)
    if residual is not None:
        out["dresidual"] = dresidual
    return out


def _array(values, dtype, misaligned):
    """A C-contiguous copy; `misaligned` puts it one element past an aligned address."""
    flat = np.empty(values.size + 1, dtype=dtype)
    out = flat[1:] if misaligned else flat[:-1]
    out[...] = values.ravel()
    return out


def run(lib, x64, dy64, gamma64, beta64, G, cl, dtypes, misaligned=False, eps=1e-5, act="none",
        residual64=None):
    """Runs the emulated forward and backward on (N, C, S) float64 inputs cast to `dtypes`
    (the fused form with `act` and, when given, the residual); returns the kernels' results and
    the float64 reference of the cast inputs (both channels-first), and the size of the terms
    each gradient is summed from."""
    N, C, S = x64.shape
    dtype, param_dtype = dtypes
    data_t, param_t = NP_DTYPES[dtype], NP_DTYPES[param_dtype]
    acc_t = np.float64 if dtype == FLOAT64 else np.float32

    def stored(a):  # the kernel's layout: (N, C, S) or (N, S, C)
        return a.transpose(0, 2, 1) if cl else a

    x = _array(stored(x64.astype(data_t)), data_t, misaligned)
    dy = _array(stored(dy64.astype(data_t)), data_t, misaligned)
    gamma, beta = gamma64.astype(param_t), beta64.astype(param_t)
    r = None if residual64 is None else _array(stored(residual64.astype(data_t)), data_t,
                                               misaligned)
    y, dx = np.empty_like(x), np.empty_like(x)
    dr = None if r is None else np.empty_like(x)
    mean, rstd = np.empty(N * G, acc_t), np.empty(N * G, acc_t)
    dgamma, dbeta = np.empty_like(gamma), np.empty_like(gamma)
    ws_f = np.empty(lib.gn_cuda_forward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
    ws_b = np.empty(lib.gn_cuda_backward_workspace_bytes(N, C, S, G, cl) + 16, np.uint8)
    p = lambda a: None if a is None else a.ctypes.data  # noqa: E731
    code = ACT_CODES[act]
    assert lib.gn_cuda_forward(dtype, param_dtype, p(x), p(gamma), p(beta), p(r), p(y), p(mean),
                               p(rstd), N, C, S, G, cl, code, eps, p(ws_f), None) == 0
    assert lib.gn_cuda_backward(dtype, param_dtype, p(dy), p(x), p(gamma), p(beta), p(r),
                                p(mean), p(rstd), p(dx), p(dgamma), p(dbeta), p(dr), N, C, S, G,
                                cl, code, p(ws_b), None) == 0

    def channels_first(a):
        a = a.astype(np.float64).reshape((N, S, C) if cl else (N, C, S))
        return a.transpose(0, 2, 1) if cl else a

    xr, dyr = channels_first(x), channels_first(dy)
    rr = None if r is None else channels_first(r)
    ref = reference(xr, dyr, gamma.astype(np.float64), beta.astype(np.float64), G, eps, act, rr)
    # A sum whose terms cancel is only as accurate as its terms' size times the working
    # precision, whatever the kernel (tests/test_group_norm.py's term_scales, same idea).
    scale_c = np.repeat(ref["rstd"].reshape(N, G), C // G, 1)[..., None] * gamma[None, :, None]
    terms = {"dx": np.abs(scale_c * dyr).max(),
             "dgamma": np.sqrt((dyr ** 2).sum((0, 2))).max()}
    terms["dbeta"] = terms["dgamma"]
    ours = dict(y=channels_first(y), mean=mean, rstd=rstd, dx=channels_first(dx),
                dgamma=dgamma, dbeta=dbeta)
    if dr is not None:
        ours["dresidual"] = channels_first(dr)
        terms["dresidual"] = np.abs(dyr).max()
    return ours, ref, terms


def relative_errors(ours, ref, terms):
    errors = {}
    for name, want in ref.items():
        # no floor but zero: dx is ~1e-300 where |x| ~ 1e300 (tests/test_magnitudes.py)
        scale = max(np.abs(want).max(), terms.get(name, 0.0)) or 1.0
        errors[name] = np.abs(ours[name].astype(np.float64) - want).max() / scale
    return errors
