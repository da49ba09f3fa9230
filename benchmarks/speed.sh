#!/usr/bin/env bash
# Speed of masklab's backends/precisions/knobs on this machine (step 6). Results: benchmarks/RESULTS.md.
# Runs in one process per command so the cases share the machine's state; the CPU may be shared with
# other work, so compare the ratios within one run and repeat the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/bench}
mkdir -p "$OUT"

# 1. The default model (maskrcnn_resnet50_fpn_v2, seeded random weights) on a generated 480x640 image:
#    torchvision eager fp32 (the reference), our exact fp32 paths, bf16, and one knob setting.
"$BIN/masklab" bench \
  --case torchvision --case torch-fast --case openvino \
  --case torch-fast:bf16 --case openvino:bf16 \
  --case torch-fast:bf16:min_size=480,max_size=640,proposals=300 \
  --case openvino:bf16:min_size=480,max_size=640,proposals=300 \
  --repeat "${REPEAT:-3}" --no-cold --json | tee "$OUT/main.json"

# 2. Cold start and peak memory of `masklab segment one.jpg` with backend auto (= torch on the CPU), a fresh process.
"$BIN/masklab" bench --case torch --repeat 1 --no-flops --no-peak --json | tee "$OUT/cold.json"

# 3. The same table as Markdown, for reading.
"$BIN/python" - "$OUT/main.json" <<'PY'
import json, sys
from masklab.bench import BenchReport, format_table
print(format_table(BenchReport.from_json(json.load(open(sys.argv[1])))))
PY
