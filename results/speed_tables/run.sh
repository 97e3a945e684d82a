#!/bin/bash
# The runs behind the README's "Speed" tables (operators and kernels), one after the other on an
# idle machine, two OpenMP threads for MXNet's operators and ours:
#   bash results/speed_tables/run.sh      (from the repository root, venv on, the op built)
# GN_MXNET_CPU_ISA=generic makes the library run its generic x86-64 build of the kernels.
set -euo pipefail
out=results/speed_tables
export OMP_NUM_THREADS=2
keep_freed='glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296'
run() { local name=$1; shift; echo "== $name: $*"; env "$@" > "$out/$name.txt" 2>&1; tail -1 "$out/$name.txt"; }
run bench_ops python benchmarks/bench_ops.py --repeat 9
run bench_ops_imperative_freed_memory_kept GLIBC_TUNABLES=$keep_freed python benchmarks/bench_ops.py --repeat 9 --tables imperative
run bench_kernels_avx2_nchw python benchmarks/bench_kernels.py --repeat 25
run bench_kernels_avx2_nhwc python benchmarks/bench_kernels.py --repeat 25 --channels-last
run bench_kernels_generic_nchw GN_MXNET_CPU_ISA=generic python benchmarks/bench_kernels.py --repeat 25
# torch in its own environment (gluoncv refuses torch >= 2 beside it), from this pool's local wheel:
#   python3.11 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install /opt/wheels/torch-2.13.0+cpu-*.whl 'numpy<1.24'
run bench_torch python benchmarks/bench_torch.py --torch-python /tmp/torchenv/bin/python --repeat 15
