#!/usr/bin/env bash
# How stable a GPU INT8 build's choice is (run on the GPU machine by
# `scripts/device-test.sh run exec bash bench/gpu/int8_judge.sh OUT [MODEL:BATCH...]`): per row, an
# FP16 engine, then REPS (default 2) INT8 engines built from scratch (no timing cache, so every
# per-node timing and the whole-program judge run again), each benchmarked. The build logs keep the
# judge's line ("int8 program: ... ms with N INT8 convolutions and GEMMs, ... ms with all M,
# against ... ms with every convolution in FP16") and the `int8:` summary.
# Calibration: as many N(0, 1) images as the batch (at least 64), entropy.
set -uo pipefail
out="${1:?usage: int8_judge.sh OUT [MODEL:BATCH...]}"
shift
rows=("${@:-resnet50:256}")
reps="${REPS:-2}"
mkdir -p "$out"
models=/tmp/kiln-models
need=$(for r in "${rows[@]}"; do echo "${r%%:*}"; done | sort -u | paste -sd, -)
python3 models/export.py --out "$models" --models "$need" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
rc=0
bench() {  # engine tag
  build-cuda/bin/kiln bench "$1" --device cuda --warmup-ms 300 --duration 2 --json "$out/bench_$2.json" \
    > "$out/bench_$2.txt" 2>&1 || rc=1
  echo "$2: $(grep -E '^GPU compute' "$out/bench_$2.txt" | head -1) | $(grep -E '^throughput' "$out/bench_$2.txt" | head -1)"
}
for r in "${rows[@]}"; do
  name="${r%%:*}"; b="${r##*:}"
  calib="/tmp/int8_judge_${b}.npz"
  [ -f "$calib" ] || python3 -c "import numpy as np; np.savez('$calib', input=np.random.default_rng(1).standard_normal((max(64, $b), 3, 224, 224), dtype=np.float32))"
  tag="${name}_${b}_fp16"
  build-cuda/bin/kiln build "$models/$name.onnx" --device cuda --shapes "input:${b}x3x224x224" -o "/tmp/$tag.kiln" \
    --precision fp16 > "$out/build_$tag.txt" 2>&1 || rc=1
  bench "/tmp/$tag.kiln" "$tag"
  for rep in $(seq 1 "$reps"); do
    tag="${name}_${b}_int8_$rep"
    build-cuda/bin/kiln build "$models/$name.onnx" --device cuda --shapes "input:${b}x3x224x224" -o "/tmp/$tag.kiln" \
      -v --precision int8 --calib "$calib" > "$out/build_$tag.txt" 2>&1 || rc=1
    grep -E "^int8: |int8 program:" "$out/build_$tag.txt" | head -3
    bench "/tmp/$tag.kiln" "$tag"
    rm -f "/tmp/$tag.kiln"
  done
done
exit "$rc"
