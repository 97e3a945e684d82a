#!/bin/sh
# The figures of docs/models.md's "BiT ResNetV2" section: tests/test_resnetv2.py's comparisons
# with timm's logits (tests/fixtures/, made by tests/fixtures/make_resnetv2_fixture.py with timm
# 1.0.31), each printing its measured error, preceded by the machine they ran on.
set -e
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); commit: $(git rev-parse --short HEAD)"
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores;" \
       "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  python -c "import gn_mxnet; print('GroupNorm kernels:', gn_mxnet.cpu_isa(), 'build')"
  python -m pytest tests/test_resnetv2.py -s -q -p no:cacheprovider \
      -k 'fixture_matches_timm_logits or float64'
} > "$here/test_output.txt" 2>&1
cat "$here/test_output.txt"
