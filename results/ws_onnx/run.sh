#!/bin/bash
# The errors quoted in docs/onnx_amp.md ("Weight-standardized convolutions"): the WS export tests
# of tests/test_onnx.py with their printed max differences (from the repository root, venv on).
set -euo pipefail
out=results/ws_onnx/test_onnx_ws.txt
{ echo "commit $(git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC'); $(python -c 'import onnx, onnxruntime; print("onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)')"
  python -m pytest tests/test_onnx.py -s -q -p no:cacheprovider \
      -k "standardized or std_conv or ws_resnet or float16_weight" 2>&1 \
      | grep -v -e 'onnxruntime:' -e 'Subgraph backend MKLDNN'
} > "$out"
tail -1 "$out"
