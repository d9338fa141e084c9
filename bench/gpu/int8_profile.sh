#!/usr/bin/env bash
# Where an INT8 GPU engine spends its time, against FP16 (run on the GPU machine by
# `scripts/device-test.sh run exec bash bench/gpu/int8_profile.sh OUT [MODEL:BATCH...]`): per row,
# calibration data (as many images from N(0, 1) as the batch, at least 64), `kiln build --device cuda -v` in FP16 and in INT8 (the
# build log names each step's kernel and the INT8 choice), then `kiln bench --dump-profile` on each
# engine (per-step GPU times).
set -uo pipefail
out="${1:?usage: int8_profile.sh OUT [MODEL:BATCH...]}"
shift
rows=("${@:-resnet50:256}")
mkdir -p "$out"
models=/tmp/kiln-models
need=$(for r in "${rows[@]}"; do echo "${r%%:*}"; done | sort -u | paste -sd, -)
python3 models/export.py --out "$models" --models "$need" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
rc=0
for r in "${rows[@]}"; do
  name="${r%%:*}"; b="${r##*:}"
  python3 -c "import numpy as np; np.savez('/tmp/int8_profile_calib.npz', input=np.random.default_rng(1).standard_normal((max(64, $b), 3, 224, 224), dtype=np.float32))"
  for p in fp16 int8; do
    args="--precision $p"
    [ "$p" = int8 ] && args="$args --calib /tmp/int8_profile_calib.npz"
    tag="${name}_${b}_$p"
    build-cuda/bin/kiln build "$models/$name.onnx" --device cuda --shapes "input:${b}x3x224x224" -o "/tmp/$tag.kiln" \
      -v $args > "$out/build_$tag.txt" 2>&1 || rc=1
    grep -E "^int8: " "$out/build_$tag.txt" | head -2
    build-cuda/bin/kiln bench "/tmp/$tag.kiln" --device cuda --warmup-ms 300 --duration 1 --dump-profile \
      > "$out/profile_$tag.txt" 2>&1 || rc=1
    echo "$tag: $(grep -E '^GPU compute' "$out/profile_$tag.txt" | head -1)"
  done
done
exit "$rc"
