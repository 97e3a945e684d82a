#!/usr/bin/env bash
# Horovod 0.28.1 for the MXNet of the active Python environment, built from source with Gloo
# (horovodrun's own transport; no MPI needed): what `--kv-store horovod` and tests/test_horovod.py
# run on. The README's test command calls it after `pip install -e ".[test]"`; elsewhere run
# `pip install -e ".[horovod]" && bash tools/install_horovod.sh` (docs/multi_machine.md).
#
# Why a script and not a pip extra: the build must see the installed mxnet, so it runs without
# pip's build isolation (--no-build-isolation), and Horovod reads its build switches from the
# environment; neither can be said in an extra. --no-deps keeps numpy < 1.24 (Horovod's runtime
# dependencies, pinned, are setup.py's `horovod` extra). It needs g++ and cmake, and takes ~3-6
# minutes on 2 cores; once built, pip reuses its cached wheel in a new environment.
#
# HOROVOD_WITH_MPI=1 also builds MPI support (needs an MPI installation, for mpirun); other
# HOROVOD_* build switches, e.g. HOROVOD_GPU_OPERATIONS=NCCL for GPUs, pass through to the build.
set -euo pipefail

HOROVOD_VERSION=0.28.1
WHEEL_VERSION=0.45.1   # setuptools builds Horovod's wheel with it (no isolation provides it)

if ! command -v cmake >/dev/null 2>&1; then
    echo "error: building Horovod needs cmake; install it (e.g. apt-get install cmake)" >&2
    exit 1
fi
if ! python -c 'import mxnet' >/dev/null 2>&1; then
    echo "error: install gn-mxnet (and with it mxnet) into this environment first:" \
         "pip install -e \".[horovod]\"" >&2
    exit 1
fi
if [ "${HOROVOD_WITH_MPI:-0}" = 1 ]; then mpi=(HOROVOD_WITH_MPI=1); else mpi=(HOROVOD_WITHOUT_MPI=1); fi

python -m pip install "wheel==${WHEEL_VERSION}"
env HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 "${mpi[@]}" HOROVOD_WITHOUT_TENSORFLOW=1 \
    HOROVOD_WITHOUT_PYTORCH=1 \
    python -m pip install --no-build-isolation --no-deps "horovod==${HOROVOD_VERSION}"
# An installed Horovod built without MXNet satisfies pip, but not --kv-store horovod.
if ! python -c 'import horovod.mxnet' >/dev/null 2>&1; then
    echo "error: the installed horovod has no MXNet support; pip uninstall horovod, then run" \
         "this script again" >&2
    exit 1
fi
echo "horovod ${HOROVOD_VERSION} for mxnet: $(python -c 'import horovod.mxnet as h; print("gloo" if h.gloo_built() else "", "mpi" if h.mpi_built() else "")')"
