#!/bin/bash
# The runs behind the README's "GN/BN training img/s" table and its breakdown, one after the
# other on an idle machine: bash results/train_speed/run.sh (from the repository root, venv on).
set -euo pipefail
out=results/train_speed
r50="--network resnet50_v1b --data-shape 3,224,224 --num-classes 1000 --num-groups 32 --batch-size 8"
run() { local name=$1; shift; echo "== $name: $*"; env "$@" > "$out/$name.txt" 2>&1; tail -3 "$out/$name.txt"; }
run resnet8_small_omp2 OMP_NUM_THREADS=2 python benchmarks/bench_train.py --rounds 21
run resnet8_small_omp_unset python benchmarks/bench_train.py --rounds 21
run resnet8_small_omp2_mkldnn_off OMP_NUM_THREADS=2 MXNET_MKLDNN_ENABLED=0 python benchmarks/bench_train.py --rounds 21
run resnet50_v1b_b8_omp2 OMP_NUM_THREADS=2 python benchmarks/bench_train.py $r50 --steps 2 --rounds 9 --warmup 2
run resnet50_v1b_b8_omp2_mkldnn_off OMP_NUM_THREADS=2 MXNET_MKLDNN_ENABLED=0 python benchmarks/bench_train.py $r50 --steps 1 --rounds 5 --warmup 1
run breakdown_resnet8_small_omp2 OMP_NUM_THREADS=2 python benchmarks/bench_train.py --breakdown
run breakdown_resnet50_v1b_b8_omp2 OMP_NUM_THREADS=2 python benchmarks/bench_train.py --breakdown $r50 --steps 2 --rounds 2 --warmup 2
run breakdown_resnet50_v1b_b8_omp2_mkldnn_off OMP_NUM_THREADS=2 MXNET_MKLDNN_ENABLED=0 python benchmarks/bench_train.py --breakdown $r50 --steps 1 --rounds 2 --warmup 1
