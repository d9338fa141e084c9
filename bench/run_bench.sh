#!/usr/bin/env bash
# Kiln vs ONNX Runtime on the CPU, side by side in one run, same thread count:
#   ResNet-50, MobileNetV2, EfficientNet-B0 at batch 1 and 16; the BERT-base encoder at sequence
#   128, batch 1 and 8.
# Writes bench/results/<date>-cpu.md (the table), <date>-cpu.png (chart, bench/make_chart.py) and
# <date>-cpu/ (every run's JSON and log).
#
#   bench/run_bench.sh                     # everything (about 10 minutes on 2 cores)
#   ROWS="resnet50:1 bert:8" bench/run_bench.sh
#   SKIP_PRECISION=1 bench/run_bench.sh   # FP32 table only (else bench/run_precision_bench.sh runs after it)
#
# Kiln: `kiln build` (tactics timed, one timing cache shared by the rows) writes an engine per row,
# then `kiln bench ENGINE` times it. ORT: bench/ort_bench.js (onnxruntime-node, CPU EP).
#
# Environment: KILN (the kiln binary, default build/kiln, built if missing), MODELS (default
# ~/.cache/kiln/models, exported with scripts/export-models.sh if missing), THREADS (2),
# KILN_DURATION (2 s), KILN_WARMUP_MS (500), ORT_DURATION (2 s), ORT_WARMUP_MS (500), SEQ (128),
# ROWS (MODEL:BATCH ...), DATE (YYYY-MM-DD), OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

KILN="${KILN:-$repo/build/kiln}"
MODELS="${MODELS:-$HOME/.cache/kiln/models}"
THREADS="${THREADS:-2}"
KILN_DURATION="${KILN_DURATION:-2}"
KILN_WARMUP_MS="${KILN_WARMUP_MS:-500}"
ORT_DURATION="${ORT_DURATION:-2}"
ORT_WARMUP_MS="${ORT_WARMUP_MS:-500}"
SEQ="${SEQ:-128}"
ROWS="${ROWS:-resnet50:1 resnet50:16 mobilenet_v2:1 mobilenet_v2:16 efficientnet_b0:1 efficientnet_b0:16 bert:1 bert:8}"
DATE="${DATE:-$(date +%F)}"
OUT_DIR="${OUT_DIR:-$here/results}"
PY=/usr/bin/python3

declare -A PRETTY=([resnet50]="ResNet-50" [mobilenet_v2]="MobileNetV2" [efficientnet_b0]="EfficientNet-B0"
                   [bert]="BERT-base encoder (seq $SEQ)")

die() { echo "run_bench: $*" >&2; exit 1; }

# --- Prerequisites.
command -v node >/dev/null || die "node not found (run scripts/setup-bench.sh)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"
(cd "$here" && node -e "require('onnxruntime-node')") 2>/dev/null || die "onnxruntime-node missing (run scripts/setup-bench.sh)"
$PY -c "import matplotlib" 2>/dev/null || die "matplotlib missing for $PY (run scripts/setup-bench.sh)"
if [ ! -x "$KILN" ]; then
  echo "run_bench: $KILN missing; building it (scripts/build.sh default kiln)"
  "$repo/scripts/build.sh" default kiln
  KILN="$repo/build/kiln"
fi
"$KILN" bench --help >/dev/null 2>&1 || die "$KILN has no 'bench' subcommand; rebuild it (scripts/build.sh default kiln)"
need_export=0
for row in $ROWS; do
  m="${row%%:*}"
  [ -f "$MODELS/$m.onnx" ] || need_export=1
done
if [ "$need_export" = 1 ]; then
  echo "run_bench: exporting the models into $MODELS (scripts/export-models.sh)"
  "$repo/scripts/export-models.sh" "$MODELS"
fi

run_dir="$OUT_DIR/$DATE-cpu"
md="$OUT_DIR/$DATE-cpu.md"
png="$OUT_DIR/$DATE-cpu.png"
mkdir -p "$run_dir"
tsv="$run_dir/results.tsv"
rm -f "$run_dir/timing-cache.json"  # every run times its tactics afresh
printf 'model\tbatch\tkiln_median_ms\tort_median_ms\tkiln_items_per_s\tort_items_per_s\tkiln_iterations\tort_iterations\tkiln_kernels\tkiln_build_ms\tkiln_peak_mib\tkiln_total_mib\tkiln_rebuild_ms\tsame_engine\n' >"$tsv"

shapes_for() {  # MODEL BATCH
  case "$1" in
    bert) echo "input_ids:${2}x$SEQ,attention_mask:${2}x$SEQ" ;;
    *) echo "input:${2}x3x224x224" ;;
  esac
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
load_warning=""
if awk -v l="${load_start%% *}" -v n="$(nproc)" 'BEGIN { exit !(l >= n) }'; then
  load_warning="Load average ${load_start%% *} at the start on $(nproc) CPUs: other work was running, so these numbers are noisy (ONNX Runtime's spinning thread pool is hit hardest)."
  echo "run_bench: warning: $load_warning" >&2
fi
start_s=$SECONDS
for row in $ROWS; do
  m="${row%%:*}"
  b="${row##*:}"
  shapes="$(shapes_for "$m" "$b")"
  kj="$run_dir/$m-b$b.kiln.json"
  oj="$run_dir/$m-b$b.ort.json"
  echo "=== $m batch $b ($shapes)"
  engine="$run_dir/$m-b$b.kiln"
  "$KILN" build "$MODELS/$m.onnx" --shapes "$shapes" --threads "$THREADS" --timing-cache "$run_dir/timing-cache.json" \
    -o "$engine" >"$run_dir/$m-b$b.build.log" 2>&1 ||
    { cat "$run_dir/$m-b$b.build.log" >&2; die "kiln build failed on $m batch $b"; }
  build_ms="$(sed -n 's/^build time: *\([0-9.]*\) ms.*/\1/p' "$run_dir/$m-b$b.build.log")"
  # The same build again: every tactic now comes from the timing cache.
  "$KILN" build "$MODELS/$m.onnx" --shapes "$shapes" --threads "$THREADS" --timing-cache "$run_dir/timing-cache.json" \
    -o "$engine.rebuild" >"$run_dir/$m-b$b.rebuild.log" 2>&1 ||
    { cat "$run_dir/$m-b$b.rebuild.log" >&2; die "kiln rebuild failed on $m batch $b"; }
  rebuild_ms="$(sed -n 's/^build time: *\([0-9.]*\) ms.*/\1/p' "$run_dir/$m-b$b.rebuild.log")"
  cmp -s "$engine" "$engine.rebuild" && same_engine=yes || same_engine=no
  rm -f "$engine.rebuild"
  "$KILN" bench "$engine" --threads "$THREADS" --warmup-ms "$KILN_WARMUP_MS" \
    --duration "$KILN_DURATION" --json "$kj" >"$run_dir/$m-b$b.kiln.log" 2>&1 ||
    { cat "$run_dir/$m-b$b.kiln.log" >&2; die "kiln bench failed on $m batch $b"; }
  rm -f "$engine"  # engines are large; the build log and JSON keep what matters
  grep -E '^(latency|throughput)' "$run_dir/$m-b$b.kiln.log" | sed 's/^/  kiln: /'
  node "$here/ort_bench.js" "$MODELS/$m.onnx" --shapes "$shapes" --threads "$THREADS" --warmup-ms "$ORT_WARMUP_MS" \
    --duration "$ORT_DURATION" --json "$oj" >"$run_dir/$m-b$b.ort.log" 2>&1 ||
    { cat "$run_dir/$m-b$b.ort.log" >&2; die "ort_bench.js failed on $m batch $b"; }
  grep -E '^(latency|throughput)' "$run_dir/$m-b$b.ort.log" | sed 's/^/  ort:  /'
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$b" \
    "$(jq .latency_ms.median "$kj")" "$(jq .latency_ms.median "$oj")" \
    "$(jq .throughput.items_per_s "$kj")" "$(jq .throughput.items_per_s "$oj")" \
    "$(jq .iterations "$kj")" "$(jq .iterations "$oj")" "$(jq .engine.kernels "$kj")" "$build_ms" \
    "$(jq '.engine.memory_peak_bytes / 1048576' "$kj")" "$(jq '.engine.memory_total_bytes / 1048576' "$kj")" \
    "$rebuild_ms" "$same_engine" >>"$tsv"
done
elapsed=$((SECONDS - start_s))
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- Report.
cpu_model="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
cpus="$(nproc)"
cores_per_socket="$(lscpu | sed -n 's/^Core(s) per socket:[[:space:]]*//p' | head -1)"
threads_per_core="$(lscpu | sed -n 's/^Thread(s) per core:[[:space:]]*//p' | head -1)"
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit (with uncommitted changes)"; fi
ort_version="$(jq -r .ort_version "$(ls "$run_dir"/*.ort.json | head -1)")"
cmd="bench/run_bench.sh"
env_prefix=""
[ "$ROWS" != "resnet50:1 resnet50:16 mobilenet_v2:1 mobilenet_v2:16 efficientnet_b0:1 efficientnet_b0:16 bert:1 bert:8" ] && env_prefix+="ROWS=\"$ROWS\" "
[ "$THREADS" != 2 ] && env_prefix+="THREADS=$THREADS "
[ "$KILN_DURATION" != 2 ] && env_prefix+="KILN_DURATION=$KILN_DURATION "
[ "$KILN_WARMUP_MS" != 500 ] && env_prefix+="KILN_WARMUP_MS=$KILN_WARMUP_MS "
[ "$ORT_DURATION" != 2 ] && env_prefix+="ORT_DURATION=$ORT_DURATION "
[ "$ORT_WARMUP_MS" != 500 ] && env_prefix+="ORT_WARMUP_MS=$ORT_WARMUP_MS "
[ "$SEQ" != 128 ] && env_prefix+="SEQ=$SEQ "
[ "$KILN" != "$repo/build/kiln" ] && env_prefix+="KILN=${KILN#$repo/} "

{
  echo "# Kiln vs ONNX Runtime, CPU, $DATE"
  echo
  echo "| Model | Batch | Kiln ms, median | ONNX Runtime ms, median | Speed-up (ORT ms / Kiln ms) | Kiln items/s | ORT items/s | Kiln kernels per inference | Kiln peak / summed activations, MiB | Kiln build, s: timed / from the cache | Same engine bytes |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  tail -n +2 "$tsv" | while IFS=$'\t' read -r m b k o ki oi kn on kk kb kp kt kr same; do
    ratio="$(awk -v k="$k" -v o="$o" 'BEGIN { printf "%.2f", o / k }')"
    printf '| %s | %s | %s | %s | **%s** | %s | %s | %s | %s / %s | %s / %s | %s |\n' "${PRETTY[$m]:-$m}" "$b" \
      "$(awk -v v="$k" 'BEGIN { printf "%.2f", v }')" "$(awk -v v="$o" 'BEGIN { printf "%.2f", v }')" "$ratio" \
      "$(awk -v v="$ki" 'BEGIN { printf "%.4g", v }')" "$(awk -v v="$oi" 'BEGIN { printf "%.4g", v }')" "$kk" \
      "$(awk -v v="$kp" 'BEGIN { printf "%.1f", v }')" "$(awk -v v="$kt" 'BEGIN { printf "%.1f", v }')" \
      "$(awk -v v="$kb" 'BEGIN { printf "%.1f", v / 1000 }')" "$(awk -v v="$kr" 'BEGIN { printf "%.2f", v / 1000 }')" "$same"
  done
  echo
  echo "- **Speed-up** = ORT median latency / Kiln median latency: above 1.0 Kiln is faster."
  echo "- **Kiln**: \`kiln build\` at --opt-level 3 with --threads $THREADS (tactics timed on this machine at the row's"
  echo "  shapes; the run starts with an empty timing cache shared by the rows, so a row may reuse an earlier row's timing"
  echo "  of an identical node), then \`kiln bench ENGINE\`:"
  echo "  ${KILN_WARMUP_MS} ms of warm-up, then at least ${KILN_DURATION} s of timed iterations. FP32, CPU backend."
  echo "- **Build, s**: the first build (timing every tactic not yet in the cache) and the same build again with the"
  echo "  cache filled; **Same engine bytes**: the two engine files are identical (builds are deterministic given the cache)."
  echo "- **Kernels per inference**: kernel launches, reorders included; aliases (Reshape, Flatten) and folded nodes run none."
  echo "- **ONNX Runtime**: onnxruntime-node $ort_version, CPU execution provider, intraOpNumThreads=$THREADS,"
  echo "  interOpNumThreads=1, graphOptimizationLevel 'all'; ${ORT_WARMUP_MS} ms of warm-up, then at least ${ORT_DURATION} s of"
  echo "  timed iterations per row."
  echo "- Inputs: seeded random data (floats in [-1, 1), token ids and mask in [0, 10)); CNNs at 224x224; BERT at"
  echo "  sequence $SEQ. Batch = the inputs' leading dim; items/s = batch x inferences/s."
  echo "- Models: \`models/export.py\` (seeded random weights, opset 17), from \`$MODELS\`."
  [ -n "$load_warning" ] && echo "- **Warning**: $load_warning"
  echo
  echo "| | |"
  echo "|---|---|"
  echo "| Date | $DATE |"
  echo "| Machine | $cpu_model; $cpus CPUs visible (cores per socket $cores_per_socket, threads per core $threads_per_core) |"
  echo "| Threads | $THREADS for both |"
  echo "| Load average (1/5/15 min) | $load_start at start, $load_end at end (shared machine) |"
  echo "| Kiln commit | $commit |"
  echo "| ONNX Runtime | onnxruntime-node $ort_version (npm, CPU) |"
  echo "| Reproduce | \`scripts/setup-bench.sh && ${env_prefix}$cmd\` |"
  echo "| Wall time | ${elapsed} s |"
  echo "| Raw results | \`$(basename "$run_dir")/\` (JSON of every run, logs, results.tsv) |"
  echo
  echo "![Kiln vs ONNX Runtime]($(basename "$png"))"
} >"$md"

$PY "$here/make_chart.py" "$tsv" "$png" --seq "$SEQ" --title "Kiln vs ONNX Runtime, CPU FP32, $THREADS threads, $DATE"
echo "run_bench: wrote $md and $png (${elapsed} s)"

# Reduced precision rows (BF16, INT8, INT8 with the accuracy guard, ORT on Kiln's QDQ export).
if [ "${SKIP_PRECISION:-0}" != 1 ]; then
  KILN="$KILN" MODELS="$MODELS" THREADS="$THREADS" DATE="$DATE" OUT_DIR="$OUT_DIR" SEQ="$SEQ" \
    "$here/run_precision_bench.sh"
fi
