#!/usr/bin/env bash
# The main job on the bundled example: inspect the model, optimize it (showing what was fused),
# then run it and write its outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
model="examples/tiny_cnn.onnx"
out="${1:-out/tiny_cnn}"
mkdir -p "$out"
./build/kiln inspect "$model"
echo
./build/kiln optimize "$model" --output "$out/optimized.onnx"
echo
./build/kiln run "$model" --shapes image:4x1x28x28 --output-dir "$out"
