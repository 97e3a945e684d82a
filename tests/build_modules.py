"""benchmarks/cuda_build.py and the builder it loads by path (gn_mxnet/operator/build.py),
imported the way benchmarks/gpu_check.py imports them: neither may import gn_mxnet, which
imports mxnet. Also what the CUDA build tests share: the nvcc found and the CI's one arch."""
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import cuda_build  # noqa: E402

builder = cuda_build.builder
load_by_path = cuda_build.load_by_path

NVCC = builder.find_nvcc()
NO_NVCC = "nvcc not found ($NVCC, PATH, /usr/local/cuda/bin)"
needs_nvcc = pytest.mark.skipif(NVCC is None, reason=NO_NVCC)


def ci_arch():
    """The one arch CI builds for, to stay fast: sm_80 where this nvcc builds it."""
    archs = builder.cuda_archs(NVCC)
    return 80 if 80 in archs else archs[0]
