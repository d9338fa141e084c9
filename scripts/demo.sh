#!/usr/bin/env bash
# The main job on the bundled example: inspect the model, compile it into an engine (passes,
# tactics timed on this machine, memory plan), inspect the engine (what was fused, which kernel
# runs each node, peak memory), run the engine and write its outputs, and time it.
set -euo pipefail
cd "$(dirname "$0")/.."
model="examples/tiny_cnn.onnx"
out="${1:-out/tiny_cnn}"
mkdir -p "$out"
./build/kiln inspect "$model"
echo
./build/kiln build "$model" --min-shapes image:1x1x28x28 --opt-shapes image:4x1x28x28 --max-shapes image:16x1x28x28 \
  --timing-cache "$out/timing-cache.json" -o "$out/tiny_cnn.kiln"
echo
./build/kiln inspect "$out/tiny_cnn.kiln"
echo
./build/kiln run "$out/tiny_cnn.kiln" --shapes image:4x1x28x28 --output-dir "$out"
echo
./build/kiln bench "$out/tiny_cnn.kiln" --shapes image:4x1x28x28 --duration 1
