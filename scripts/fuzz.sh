#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a fixed number of inputs from a
# seed corpus made of the ONNX backend test suite's models and tensors, and of engines that build/kiln
# builds from examples/tiny_cnn.onnx (none when build/kiln is absent). Deterministic (fixed
# seed), so CI results reproduce. Override with FUZZ_RUNS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${FUZZ_RUNS:-500000}"
scripts/build.sh fuzz fuzz_model_loader fuzz_tensor_files fuzz_engine_loader
data=/usr/include/onnx/backend/test/data
work="build-fuzz/corpus"
mkdir -p "$work/models" "$work/tensors" "$work/engines"
if [ -d "$data" ]; then
  i=0
  for m in "$data"/node/*/model.onnx "$data"/pytorch-converted/*/model.onnx "$data"/simple/*/model.onnx; do
    i=$((i + 1))
    [ $((i % 4)) -eq 0 ] || continue  # a quarter of the suite keeps the corpus small
    cp "$m" "$work/models/m$i.onnx"
  done
  i=0
  for t in "$data"/node/test_*/test_data_set_0/input_0.pb; do
    i=$((i + 1))
    [ $((i % 8)) -eq 0 ] || continue
    cp "$t" "$work/tensors/t$i.pb"
  done
fi
for f in tests/data/*.npy; do [ -e "$f" ] && cp "$f" "$work/tensors/"; done
# Engine seeds: small engines built by build/kiln when it exists; otherwise an empty corpus.
if [ -x build/kiln ] && build/kiln build --help >/dev/null 2>&1; then
  build/kiln build examples/tiny_cnn.onnx -o "$work/engines/tiny_cnn.kiln" >/dev/null || true
  build/kiln build examples/tiny_cnn.onnx --opt-level 0 -o "$work/engines/tiny_cnn_o0.kiln" >/dev/null || true
fi
# A failed huge allocation must surface as a kiln::Error, as in release builds.
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1
echo "fuzz_model_loader: $runs runs"
./build-fuzz/fuzz/fuzz_model_loader -seed=1 -runs="$runs" -max_len=65536 -rss_limit_mb=4096 -timeout=20 "$work/models" 2>&1 | tail -3
echo "fuzz_tensor_files: $runs runs"
./build-fuzz/fuzz/fuzz_tensor_files -seed=1 -runs="$runs" -max_len=4096 -rss_limit_mb=2048 -timeout=10 "$work/tensors" 2>&1 | tail -3
echo "fuzz_engine_loader: $runs runs"
./build-fuzz/fuzz/fuzz_engine_loader -seed=1 -runs="$runs" -max_len=65536 -rss_limit_mb=4096 -timeout=20 "$work/engines" 2>&1 | tail -3
echo "fuzz: no crashes"
