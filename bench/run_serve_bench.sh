#!/usr/bin/env bash
# `kiln serve` on the CPU backend, dynamic batching on against off, in one run on one machine:
#   MobileNetV2 (default; MODEL=resnet50 for ResNet-50) served to 1..32 concurrent clients by
#   `kiln perf` (binary tensors over HTTP), throughput and p50/p99 latency per level, failures;
#   and the per-request protocol overhead (an empty model's round trip over HTTP and gRPC) against
#   a plain loopback TCP round trip.
# Writes bench/results/<date>-serve.md (tables), <date>-serve.png (chart) and <date>-serve/ (every
# CSV/JSON and server log).
#
#   bench/run_serve_bench.sh                    # about 12 minutes on 2 cores
#   LEVELS="1 16" INTERVAL_MS=2000 bench/run_serve_bench.sh
#
# Configs (same engine build settings, tactics timed at load, 1 instance using every core):
#   off: max_batch_size 1, no dynamic_batching: each request runs alone (the engine is tuned for
#        batch 1, the best case for unbatched serving);
#   on:  max_batch_size MAX_BATCH (32), dynamic_batching { max_queue_delay_microseconds DELAY_US }.
#
# Environment: KILN (default build/kiln), MODELS (~/.cache/kiln/models), MODEL (mobilenet_v2),
# INPUT (input), LEVELS ("1 2 4 8 16 32"), INTERVAL_MS (3000), MAX_TRIALS (8), MAX_BATCH (32),
# DELAY_US (2000), THREADS (cores), DATE, OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

KILN="${KILN:-$repo/build/kiln}"
MODELS="${MODELS:-$HOME/.cache/kiln/models}"
MODEL="${MODEL:-mobilenet_v2}"
INPUT="${INPUT:-input}"
LEVELS="${LEVELS:-1 2 4 8 16 32}"
INTERVAL_MS="${INTERVAL_MS:-3000}"
MAX_TRIALS="${MAX_TRIALS:-8}"
MAX_BATCH="${MAX_BATCH:-32}"
DELAY_US="${DELAY_US:-2000}"
THREADS="${THREADS:-$(nproc)}"
DATE="${DATE:-$(date +%F)}"
OUT_DIR="${OUT_DIR:-$here/results}"
PY=/usr/bin/python3

die() { echo "run_serve_bench: $*" >&2; exit 1; }
[ -x "$KILN" ] || die "no kiln binary at $KILN (scripts/build.sh default)"
[ -f "$MODELS/$MODEL.onnx" ] || die "no $MODELS/$MODEL.onnx (scripts/export-models.sh)"

out="$OUT_DIR/$DATE-serve"
rm -rf "$out"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

# Repositories, one per server (each model runs alone in its server, as in a deployment; several
# OpenMP-threaded models in one process on 2 cores make libgomp throttle its spin-waiting, which
# slows every engine call): the model with batching off, with it on, and an empty model
# (Identity on 4 floats) for the protocol overhead.
mk_model() {  # repo config
  mkdir -p "$work/$1/$1/1"
  cp "$MODELS/$MODEL.onnx" "$work/$1/$1/1/model.onnx"  # a link leading outside the repository is refused
  printf '%s\n' "$2" > "$work/$1/$1/config.pbtxt"
}
mk_model off "max_batch_size: 1
instance_group [ { count: 1 kind: KIND_CPU } ]
kiln { threads_per_instance: $THREADS }"
mk_model on "max_batch_size: $MAX_BATCH
dynamic_batching { max_queue_delay_microseconds: $DELAY_US }
instance_group [ { count: 1 kind: KIND_CPU } ]
kiln { threads_per_instance: $THREADS }"
mkdir -p "$work/empty/empty/1"
$PY - "$work/empty/empty/1/model.onnx" <<'EOF2'
import sys
import onnx
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty", [x], [y])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
m.ir_version = 8
onnx.save(m, sys.argv[1])
EOF2
echo "max_batch_size: 0" > "$work/empty/empty/config.pbtxt"

server=""
http=""
grpc=""
start_server() {  # repo
  rm -f "$work/ports.json"
  "$KILN" serve --model-repository "$work/$1" --http-port 0 --grpc-port 0 --port-file "$work/ports.json" \
    --cache-dir "$work/cache" --http-threads 128 > "$out/server-$1.log" 2>&1 &
  server=$!
  for _ in $(seq 1 1200); do
    if [ -s "$work/ports.json" ]; then
      http=$($PY -c "import json;print(json.load(open('$work/ports.json'))['http'])")
      curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null && break
    fi
    kill -0 $server 2>/dev/null || { cat "$out/server-$1.log"; die "kiln serve exited"; }
    sleep 0.5
  done
  curl -sf "http://127.0.0.1:$http/v2/health/ready" >/dev/null || die "kiln serve never became ready"
  grpc=$($PY -c "import json;print(json.load(open('$work/ports.json')).get('grpc', ''))")
}
stop_server() {  # repo
  curl -sf "http://127.0.0.1:$http/metrics" > "$out/metrics-$1.txt"
  kill -TERM $server
  wait $server || die "kiln serve did not exit cleanly"
}

perf() {  # name level extra...
  local name=$1 level=$2
  shift 2
  "$KILN" perf -m "$name" -u "127.0.0.1:$http" --concurrency-range "$level" -p "$INTERVAL_MS" -r "$MAX_TRIALS" \
    --percentile 99 -f "$out/$name-c$level.csv" --json "$out/$name-c$level.json" "$@" > "$out/$name-c$level.log" 2>&1 \
    || { cat "$out/$name-c$level.log"; die "kiln perf failed ($name, concurrency $level)"; }
}
for cfg in off on; do
  echo "== batching $cfg: kiln serve (building $MODEL with timed tactics)"
  start_server $cfg
  for level in $LEVELS; do
    echo "== batching $cfg, $level concurrent clients"
    perf "$cfg" "$level"
    curl -sf "http://127.0.0.1:$http/metrics" > "$out/$cfg-c$level.metrics"
  done
  stop_server $cfg
done

echo "== protocol overhead (empty model, 1 client)"
start_server empty
perf empty 1 --binary
mv "$out/empty-c1.json" "$out/empty-http-binary.json"
"$KILN" perf -m empty -u "127.0.0.1:$http" -p "$INTERVAL_MS" -r "$MAX_TRIALS" --json-tensors \
  --json "$out/empty-http-json.json" > "$out/empty-http-json.log" 2>&1
if [ -n "$grpc" ]; then
  "$KILN" perf -m empty -u "127.0.0.1:$grpc" -i grpc -p "$INTERVAL_MS" -r "$MAX_TRIALS" \
    --json "$out/empty-grpc.json" > "$out/empty-grpc.log" 2>&1
fi
stop_server empty
g++ -O2 -std=c++20 -pthread "$here/serve/loopback_rtt.cpp" -o "$work/loopback_rtt"
"$work/loopback_rtt" 20000 256 > "$out/loopback.json"

# One engine call's compute at each batch size the batcher formed, from the server's own statistics.
$PY "$here/serve/report.py" --dir "$out" --levels "$LEVELS" --model "$MODEL" --delay-us "$DELAY_US" \
  --max-batch "$MAX_BATCH" --date "$DATE" --md "$OUT_DIR/$DATE-serve.md" --png "$OUT_DIR/$DATE-serve.png" \
  --command "bench/run_serve_bench.sh${LEVELS:+ (LEVELS=\"$LEVELS\" INTERVAL_MS=$INTERVAL_MS)}"
echo "== wrote $OUT_DIR/$DATE-serve.md"
