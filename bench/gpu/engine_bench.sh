#!/usr/bin/env bash
# GPU engine files on the GPU machine (run by `scripts/device-test.sh run engines`): per model,
# `kiln build --device cuda` twice with one timing cache (the second build times nothing), then
# `kiln bench` of the ONNX model (built in memory, tactics timed) and of the engine (loaded from its
# recorded tactics), so the load time and the compute time of both come from the same call.
# Usage: bench/gpu/engine_bench.sh OUT_DIR   (env KILN_ENGINE_MODELS="resnet50:32 bert:1 ...")
set -uo pipefail
out="$1"
mkdir -p "$out"
models=/tmp/kiln-models
rows="${KILN_ENGINE_MODELS:-resnet50:32 mobilenet_v2:256 bert:32}"
need=$(for r in $rows; do echo "${r%%:*}"; done | sort -u | paste -sd, -)
python3 models/export.py --out "$models" --models "$need" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
rc=0
for r in $rows; do
  name="${r%%:*}"; b="${r##*:}"
  case "$name" in
    bert) shapes="input_ids:${b}x128,attention_mask:${b}x128"; extra="--int-range 0,2" ;;
    *) shapes="input:${b}x3x224x224"; extra="" ;;
  esac
  tag="${name}_${b}"
  engine="/tmp/$tag.kiln"; cache="/tmp/$tag.cache.json"; rm -f "$engine" "$cache"
  for pass in 1 2; do
    s=$EPOCHREALTIME
    build-cuda/bin/kiln build "$models/$name.onnx" --device cuda --shapes "$shapes" -o "$engine" \
      --timing-cache "$cache" > "$out/build_${tag}_$pass.txt" 2>&1 || rc=1
    e=$EPOCHREALTIME
    echo "$tag build $pass: $(awk "BEGIN{printf \"%.2f\", $e - $s}") s wall; $(grep -E '^tactics:' "$out/build_${tag}_$pass.txt")"
  done
  build-cuda/bin/kiln inspect "$engine" > "$out/inspect_$tag.txt" 2>&1 || rc=1
  head -6 "$out/inspect_$tag.txt" | sed -n 3,5p
  for src in onnx engine; do
    f="$models/$name.onnx"; [ "$src" = engine ] && f="$engine"
    build-cuda/bin/kiln bench "$f" --device cuda --shapes "$shapes" $extra --warmup-ms 300 --duration 1 \
      --json "$out/bench_${tag}_$src.json" > "$out/bench_${tag}_$src.txt" 2>&1 || rc=1
    echo "$tag $src: $(grep -E '^build:' "$out/bench_${tag}_$src.txt")"
    grep -E 'compute' "$out/bench_${tag}_$src.txt" | head -2
  done
  # The engine's outputs against the in-memory build's, same seeded inputs.
  build-cuda/bin/kiln run "$engine" --device cuda $extra --seed 3 -o "/tmp/${tag}_e" > /dev/null 2>&1 || rc=1
  build-cuda/bin/kiln run "$models/$name.onnx" --device cuda --shapes "$shapes" $extra --seed 3 -o "/tmp/${tag}_o" \
    > /dev/null 2>&1 || rc=1
  python3 - "$tag" <<'PY' || rc=1
import sys, glob, os, numpy as np
tag = sys.argv[1]
for f in sorted(glob.glob(f"/tmp/{tag}_e/*.npy")):
    a = np.load(f).astype(np.float64); b = np.load(f.replace(f"{tag}_e", f"{tag}_o")).astype(np.float64)
    rel = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
    print(f"{tag} engine vs in-memory build, {os.path.basename(f)}: relative L2 difference {rel:.2e}")
PY
done
exit "$rc"
