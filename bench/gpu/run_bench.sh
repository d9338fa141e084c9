#!/usr/bin/env bash
# The GPU benchmark of the GPU issue, in one call on the GPU machine (scripts/device-test.sh run
# bench): Kiln (kiln bench --device cuda) and PyTorch (bench/gpu/torch_baseline.py: eager FP16 and
# torch.compile(mode="reduce-overhead") FP16) on the same rows, same card, same run. Writes one
# JSON per Kiln row and torch.json to OUT; bench/gpu/report.py turns them into the results page.
#   bash bench/gpu/run_bench.sh OUT [ROWS]    ROWS like "resnet50:1,bert:32" (default: every row)
# KILN_GPU_PRECISIONS=fp16,fp8,int8 adds Kiln's FP8 rows (transformers only: FP8 GEMMs) and INT8
# rows (INT8 convolutions and GEMMs); their scales are calibrated on the bench's generated inputs,
# which is what `kiln bench --precision fp8|int8` does with an ONNX model.
set -uo pipefail
out="${1:?usage: run_bench.sh OUT [ROWS]}"
rows="${2:-${KILN_GPU_ROWS:-resnet50:1,resnet50:32,resnet50:256,mobilenet_v2:1,mobilenet_v2:256,vit_b16:1,vit_b16:64,bert:1,bert:32,bert:128}}"
precisions="${KILN_GPU_PRECISIONS:-fp16}"
models=/tmp/kiln-models
mkdir -p "$out" "$models"
need=$(echo "$rows" | tr ',' '\n' | cut -d: -f1 | sort -u | paste -sd, -)
python3 models/export.py --out "$models" --models "$need" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
rc=0
for row in ${rows//,/ }; do
  name=${row%%:*}
  b=${row##*:}
  case "$name" in
    bert) shapes="input_ids:${b}x128,attention_mask:${b}x128"; extra="--int-range 0,2" ;;
    yolov8_tiny) shapes="images:${b}x3x320x320"; extra="" ;;
    *) shapes="input:${b}x3x224x224"; extra="" ;;
  esac
  for p in ${precisions//,/ }; do
    # FP8 is for GEMMs (transformers); the CNNs have no FP8 convolutions, so their FP8 row would be FP16.
    cnn=0; { [ "$name" = resnet50 ] || [ "$name" = mobilenet_v2 ]; } && cnn=1
    if [ "$p" = fp8 ] && [ "$cnn" = 1 ]; then continue; fi
    echo "== kiln $name batch $b $p"
    build-cuda/bin/kiln bench "$models/$name.onnx" --device cuda --precision "$p" --shapes "$shapes" $extra \
      --warmup-ms 300 --duration 1 --json "$out/kiln_${name}_${b}_${p}.json" > "$out/kiln_${name}_${b}_${p}.txt" 2>&1 || rc=1
    grep -E "throughput|GPU compute|error" "$out/kiln_${name}_${b}_${p}.txt"
  done
done
if [ "${KILN_GPU_TORCH:-1}" = 1 ]; then
  python3 bench/gpu/torch_baseline.py --rows "${rows//vit_b16/vit_b16}" --json "$out/torch.json" > "$out/torch.txt" 2>&1 || rc=1
  tail -14 "$out/torch.txt"
fi
exit "$rc"
