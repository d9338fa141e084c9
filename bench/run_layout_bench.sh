#!/usr/bin/env bash
# The layout passes on the CPU: ViT-B/16 (torch's nn.MultiheadAttention, sequence-first) built by
# Kiln with and without split-packed-projections + cancel-transposes, beside ONNX Runtime, in one
# run, same threads. Prints one line per configuration and writes the JSONs and logs to OUT.
#
#   bench/run_layout_bench.sh OUT [MODEL]     MODEL default ~/.cache/kiln/models/vit_b16.onnx
#   (export it with: /usr/bin/python3 models/export.py --out DIR --models vit_b16)
#
# Environment: KILN (build/kiln), THREADS (2), BATCHES ("1 8"), DURATION (3 s), IMAGE (224).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:?usage: run_layout_bench.sh OUT [MODEL]}"
model="${2:-$HOME/.cache/kiln/models/vit_b16.onnx}"
KILN="${KILN:-$here/../build/kiln}"
THREADS="${THREADS:-2}"
DURATION="${DURATION:-3}"
mkdir -p "$out"
[ -f "$model" ] || { echo "run_layout_bench: no model at $model" >&2; exit 1; }
median() { /usr/bin/python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["latency_ms"]["median"])' "$1"; }
nodes() { /usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("nodes"))' "$1"; }
for b in ${BATCHES:-1 8}; do
  shapes="input:${b}x3x${IMAGE:-224}x${IMAGE:-224}"
  for cfg in passes no-layout-passes; do
    extra=()
    [ "$cfg" = no-layout-passes ] && extra=(--disable-pass split-packed-projections,cancel-transposes)
    "$KILN" build "$model" --shapes "$shapes" --threads "$THREADS" "${extra[@]}" -o "$out/vit-b$b-$cfg.kiln" \
      > "$out/vit-b$b-$cfg.build.log" 2>&1 || { cat "$out/vit-b$b-$cfg.build.log" >&2; exit 1; }
    "$KILN" bench "$out/vit-b$b-$cfg.kiln" --threads "$THREADS" --duration "$DURATION" --json "$out/vit-b$b-$cfg.json" \
      > "$out/vit-b$b-$cfg.log" 2>&1 || { cat "$out/vit-b$b-$cfg.log" >&2; exit 1; }
    transposes=$("$KILN" inspect "$out/vit-b$b-$cfg.kiln" 2>&1 | awk '$2 == "Transpose"' | wc -l)
    echo "kiln $cfg batch $b: median $(median "$out/vit-b$b-$cfg.json") ms, $(nodes "$out/vit-b$b-$cfg.json") nodes, $transposes Transpose steps"
  done
  node "$here/ort_bench.js" "$model" --shapes "$shapes" --threads "$THREADS" --warmup-ms 500 --duration "$DURATION" \
    --json "$out/vit-b$b-ort.json" > "$out/vit-b$b-ort.log" 2>&1 || { cat "$out/vit-b$b-ort.log" >&2; exit 1; }
  echo "onnxruntime batch $b: median $(median "$out/vit-b$b-ort.json") ms"
done
