#!/bin/bash
# GN+WS vs GN training img/s (issue 26 item 6) on the default net and ResNet-50 batch 8, native
# and 'ops' WS backends, and WS's share of a step (--breakdown). From the repository root, venv
# on: bash results/ws_speed/run.sh. One OpenMP thread: on a machine other jobs share, a two-thread
# team waits for its descheduled thread (docs/benchmarks.md), which swamps a 5 % effect.
# COMMIT names the commit when run outside a git checkout (e.g. from a `git archive` export,
# safe from a library rebuilt in a shared tree, whose rewrite kills a running process).
set -euo pipefail
out=results/ws_speed
r50="--network resnet50_v1b --data-shape 3,224,224 --num-classes 1000 --num-groups 32 --batch-size 8"
run() {
  local name=$1; shift
  echo "== $name: $*"
  { echo "commit ${COMMIT:-$(git rev-parse --short HEAD)}; operator library built $(date -u -r gn_mxnet/libgn_mxnet.so '+%Y-%m-%d %H:%M UTC'); run $(date -u '+%Y-%m-%d %H:%M UTC')"
    env "$@" 2>&1; } > "$out/$name.txt"
  tail -2 "$out/$name.txt" | head -1
}
b=benchmarks/bench_train.py
for round in 1 2; do   # each ratio twice, the runs apart in time
  run resnet8_small_ws_native_$round OMP_NUM_THREADS=1 python $b --conv ws --ws-backend native --rounds 21
  run resnet50_v1b_b8_ws_native_$round OMP_NUM_THREADS=1 python $b $r50 --conv ws --ws-backend native --steps 2 --rounds 9 --warmup 2
done
run resnet8_small_ws_ops OMP_NUM_THREADS=1 python $b --conv ws --ws-backend ops --rounds 21
run resnet50_v1b_b8_ws_ops OMP_NUM_THREADS=1 python $b $r50 --conv ws --ws-backend ops --steps 2 --rounds 5 --warmup 2
run breakdown_resnet8_small_ws_native OMP_NUM_THREADS=1 python $b --breakdown --conv ws --ws-backend native
run breakdown_resnet50_v1b_b8_ws_native OMP_NUM_THREADS=1 python $b --breakdown --conv ws --ws-backend native $r50 --steps 2 --rounds 2 --warmup 2
