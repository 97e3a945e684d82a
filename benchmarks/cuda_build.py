"""Builds operators/*.cu with nvcc into a stand-alone shared library and loads it with ctypes.

One compile line for benchmarks/gpu_check.py and tests/test_cuda_build.py. The wanted archs are
intersected with what this nvcc supports (CUDA 13 starts at sm_75), plus PTX for the newest.
"""
import ctypes
import os
import re
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATORS = os.path.join(REPO, "operators")
WANTED_ARCHS = (70, 75, 80, 86, 89, 90)
PTX_ARCH = 90


def find_nvcc():
    for candidate in (os.environ.get("NVCC"), "nvcc", "/usr/local/cuda/bin/nvcc"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def cuda_sources():
    return sorted(os.path.join(OPERATORS, f) for f in os.listdir(OPERATORS) if f.endswith(".cu"))


def supported_archs(nvcc):
    out = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=True).stdout
    return sorted({int(m) for m in re.findall(r"compute_(\d+)", out)})


def build_archs(nvcc):
    """The wanted archs this nvcc can build, and the arch whose PTX is embedded."""
    supported = set(supported_archs(nvcc))
    archs = [a for a in WANTED_ARCHS if a in supported]
    if not archs:
        raise RuntimeError("nvcc %s supports none of the archs %s" % (nvcc, WANTED_ARCHS))
    ptx = PTX_ARCH if PTX_ARCH in supported else archs[-1]
    return archs, ptx


def gencode_flags(archs, ptx_arch=None):
    flags = []
    for arch in archs:
        flags += ["-gencode", "arch=compute_%d,code=sm_%d" % (arch, arch)]
    if ptx_arch is not None:
        flags += ["-gencode", "arch=compute_%d,code=compute_%d" % (ptx_arch, ptx_arch)]
    return flags


def nvcc_command(nvcc, output, archs, ptx_arch=None):
    """The one compile line used by this script and by the CI build test."""
    return ([nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-shared", "-cudart", "static",
             "-I", OPERATORS] + gencode_flags(archs, ptx_arch) + ["-o", output] + cuda_sources())


def build_library(output, archs, ptx_arch=None, nvcc=None):
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("nvcc not found (PATH, $NVCC, /usr/local/cuda/bin/nvcc)")
    cmd = nvcc_command(nvcc, output, archs, ptx_arch)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError("nvcc failed:\n%s\n%s%s" % (" ".join(cmd), done.stdout, done.stderr))
    return done.stdout + done.stderr


ENTRY_POINTS = ("gn_cuda_forward_workspace_bytes", "gn_cuda_forward",
                "gn_cuda_backward_workspace_bytes", "gn_cuda_backward")


def load_library(path):
    lib = ctypes.CDLL(path)
    i64, vp, c_int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("gn_cuda_forward_workspace_bytes", "gn_cuda_backward_workspace_bytes"):
        fn = getattr(lib, name)
        fn.argtypes = [i64, i64, i64, i64, c_int]
        fn.restype = ctypes.c_size_t
    lib.gn_cuda_forward.argtypes = [c_int, c_int, vp, vp, vp, vp, vp, vp, i64, i64, i64, i64,
                                    c_int, ctypes.c_double, vp, vp]
    lib.gn_cuda_forward.restype = c_int
    lib.gn_cuda_backward.argtypes = [c_int, c_int, vp, vp, vp, vp, vp, vp, vp, vp, i64, i64,
                                     i64, i64, c_int, vp, vp]
    lib.gn_cuda_backward.restype = c_int
    return lib
