#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a fixed number of inputs from a
# seed corpus made of the ONNX backend test suite's models and tensors, and of engines that build/kiln
# builds from examples/tiny_cnn.onnx (none when build/kiln is absent). Deterministic (fixed
# seed), so CI results reproduce. Override with FUZZ_RUNS=N.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${FUZZ_RUNS:-500000}"
scripts/build.sh fuzz fuzz_model_loader fuzz_tensor_files fuzz_engine_loader fuzz_serve_requests
data=/usr/include/onnx/backend/test/data
work="build-fuzz/corpus"
mkdir -p "$work/models" "$work/tensors" "$work/engines" "$work/serve"
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
# Serve seeds: a JSON request (mode 0), a binary-extension request (mode 1, header length 92) and a
# config (mode 2); the first byte picks the parser, the next two a header length.
printf '\x00\x00\x00{"id":"1","inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],"outputs":[{"name":"y"}]}' \
  > "$work/serve/json"
printf '\x01\x5c\x00{"inputs":[{"name":"x","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}\x01\x00\x00\x00a\x00\x00\x00\x00' \
  > "$work/serve/binary"
printf '\x02\x00\x00max_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\ndynamic_batching { preferred_batch_size: [ 2 ] }\n' \
  > "$work/serve/config"
echo "fuzz_serve_requests: $runs runs"
./build-fuzz/fuzz/fuzz_serve_requests -seed=1 -runs="$runs" -max_len=8192 -rss_limit_mb=2048 -timeout=10 "$work/serve" 2>&1 | tail -3
echo "fuzz: no crashes"
