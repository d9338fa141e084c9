#!/usr/bin/env bash
# `kiln serve` with KIND_GPU instances on one GPU against two, in one run on one GPU machine
# (scripts/device-test.sh run serve): ResNet-50 FP16 (exported by models/export.py with PyTorch),
# served to LEVELS concurrent clients by `kiln perf` (one 3x224x224 FP32 image per request),
# dynamic batching on. Per placement and level: throughput, p50/p99 latency, failed requests, the
# batches each GPU ran (kiln_gpu_* metrics). Writes OUT/serve-gpu.json (summary) and every perf
# JSON/CSV, server log and metrics scrape.
#
#   bash bench/gpu/serve_bench.sh OUT
#
# Environment: KILN (build-cuda/bin/kiln), PLACEMENTS ("0 0,1": GPU lists, one server each),
# LEVELS ("16 32 64 128"), PROTOCOL (grpc), SHARED_MEMORY (none; system: the system shared-memory
# extension, HTTP only), INTERVAL_MS (3000), MAX_TRIALS (6), MAX_BATCH (32),
# BATCHES ("4, 8, 16, 32": kiln.build.gpu_batch_size), INSTANCES (2 per GPU), DELAY_US (500),
# SPREAD (true: kiln.spread_over_idle_instances, batches split over idle instances; false: whole),
# PRECISION (fp16), MODEL (resnet50), MODELS (/tmp/kiln-models; exported when the model is missing),
# KIND (KIND_GPU; KIND_CPU is a dry run of the script on a machine without a GPU).
set -uo pipefail
out="${1:?usage: serve_bench.sh OUT}"
KILN="${KILN:-build-cuda/bin/kiln}"
PLACEMENTS="${PLACEMENTS:-0 0,1}"
LEVELS="${LEVELS:-16 32 64 128}"
PROTOCOL="${PROTOCOL:-grpc}"
SHARED_MEMORY="${SHARED_MEMORY:-none}"  # system: inputs in shared memory (HTTP only)
INTERVAL_MS="${INTERVAL_MS:-3000}"
MAX_TRIALS="${MAX_TRIALS:-6}"
MAX_BATCH="${MAX_BATCH:-32}"
BATCHES="${BATCHES:-4, 8, 16, 32}"
INSTANCES="${INSTANCES:-2}"
DELAY_US="${DELAY_US:-500}"
SPREAD="${SPREAD:-true}"
PRECISION="${PRECISION:-fp16}"
MODEL="${MODEL:-resnet50}"
KIND="${KIND:-KIND_GPU}"  # KIND_CPU: a dry run of this script on a machine without a GPU
models="${MODELS:-/tmp/kiln-models}"
work=$(mktemp -d)
mkdir -p "$out" "$models"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT

if [ ! -f "$models/$MODEL.onnx" ]; then
  python3 models/export.py --out "$models" --models "$MODEL" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
fi

ready() {  # port -> 0 when /v2/health/ready answers 200
  python3 -c "import sys,urllib.request;urllib.request.urlopen('http://127.0.0.1:$1/v2/health/ready',timeout=2)" 2>/dev/null
}
scrape() {  # port file
  python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$1/metrics',timeout=5).read().decode())" > "$2" 2>/dev/null
}

rc=0
for gpus in $PLACEMENTS; do
  tag="gpus${gpus//,/}"
  repo="$work/$tag"
  mkdir -p "$repo/$MODEL/1"
  cp "$models/$MODEL.onnx" "$repo/$MODEL/1/model.onnx"
  cat > "$repo/$MODEL/config.pbtxt" <<EOF
max_batch_size: $MAX_BATCH
input [ { name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] } ]
instance_group [ { count: $INSTANCES kind: $KIND $([ "$KIND" = KIND_GPU ] && echo "gpus: [$gpus]") } ]
dynamic_batching { max_queue_delay_microseconds: $DELAY_US }
kiln { spread_over_idle_instances: $SPREAD build { precision: "$PRECISION" gpu_batch_size: [$BATCHES] } }
EOF
  echo "== $MODEL on GPU(s) $gpus: kiln serve (compiling batch sizes $BATCHES per GPU)"
  t0=$(date +%s.%N)
  "$KILN" serve --model-repository "$repo" --http-port 0 --grpc-port 0 --port-file "$work/ports.json" \
    --http-threads 256 > "$out/server-$tag.log" 2>&1 &
  server=$!
  http=""
  for _ in $(seq 1 600); do
    if [ -s "$work/ports.json" ]; then
      http=$(python3 -c "import json;print(json.load(open('$work/ports.json'))['http'])")
      ready "$http" && break
    fi
    kill -0 $server 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$http" ] || ! ready "$http"; then
    echo "kiln serve did not become ready"; tail -20 "$out/server-$tag.log"; rc=1; rm -f "$work/ports.json"; continue
  fi
  echo "ready after $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s"
  grpc=$(python3 -c "import json;print(json.load(open('$work/ports.json'))['grpc'])")
  port=$([ "$PROTOCOL" = grpc ] && echo "$grpc" || echo "$http")
  shape="input:3,224,224"  # without the batch dim: kiln perf reads max_batch_size from the config
  for level in $LEVELS; do
    "$KILN" perf -m "$MODEL" -u "127.0.0.1:$port" -i "$PROTOCOL" --concurrency-range "$level" -p "$INTERVAL_MS" \
      -r "$MAX_TRIALS" --percentile 99 --input-data random --shape "$shape" --shared-memory "$SHARED_MEMORY" --json "$out/$tag-c$level.json" \
      -f "$out/$tag-c$level.csv" > "$out/$tag-c$level.log" 2>&1 || rc=1
    scrape "$http" "$out/$tag-c$level.metrics"
    python3 - "$out/$tag-c$level.json" "$gpus" "$level" <<'EOF' || rc=1
import json, sys
j = json.load(open(sys.argv[1]))
l = j["levels"][0]
print(f"gpus {sys.argv[2]:>4} clients {sys.argv[3]:>4}: {l['throughput_infer_per_sec']:9.1f} infer/s  "
      f"p50 {l['latency_us']['p50']/1000:7.2f} ms  p99 {l['latency_us']['p99']/1000:7.2f} ms  "
      f"failed {l['requests']['failed']}  stable {l['stable']}")
EOF
  done
  kill -TERM $server
  wait $server || { echo "kiln serve did not exit cleanly"; rc=1; }
  rm -f "$work/ports.json"
done

python3 - "$out" "$PLACEMENTS" "$LEVELS" <<'EOF' || rc=1
import json, os, re, sys
out, placements, levels = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rows = []
for gpus in placements:
    tag = "gpus" + gpus.replace(",", "")
    for level in levels:
        p = os.path.join(out, f"{tag}-c{level}.json")
        if not os.path.exists(p):
            continue
        l = json.load(open(p))["levels"][0]
        per_gpu = {}
        mp = os.path.join(out, f"{tag}-c{level}.metrics")
        if os.path.exists(mp):
            for m in re.finditer(r'kiln_gpu_(execution|inference)_count\{[^}]*gpu="(\d+)"\} (\d+)', open(mp).read()):
                per_gpu.setdefault(m.group(2), {})[m.group(1)] = int(m.group(3))
        rows.append({"gpus": gpus, "clients": int(level), "throughput": l["throughput_infer_per_sec"],
                     "p50_ms": l["latency_us"]["p50"] / 1000, "p99_ms": l["latency_us"]["p99"] / 1000,
                     "failed": l["requests"]["failed"], "success": l["requests"]["success"], "stable": l["stable"],
                     "per_gpu_cumulative": per_gpu})
one = {r["clients"]: r["throughput"] for r in rows if r["gpus"] == placements[0]}
for r in rows:
    if r["gpus"] != placements[0] and r["clients"] in one and one[r["clients"]] > 0:
        r["scaling_vs_first"] = r["throughput"] / one[r["clients"]]
json.dump(rows, open(os.path.join(out, "serve-gpu.json"), "w"), indent=1)
for r in rows:
    s = f"  x{r['scaling_vs_first']:.2f}" if "scaling_vs_first" in r else ""
    print(f"{r['gpus']:>4} {r['clients']:>4} {r['throughput']:9.1f}/s p99 {r['p99_ms']:7.2f} ms failed {r['failed']}{s}")
EOF
exit "$rc"
