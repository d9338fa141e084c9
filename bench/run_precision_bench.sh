#!/usr/bin/env bash
# Reduced precision on the CPU, side by side in one run, same thread count: Kiln FP32, BF16, INT8
# (all calibrated layers) and INT8 with the accuracy guard (1% cosine budget), next to ONNX Runtime
# on the FP32 model and on the QDQ model Kiln exports (`kiln quantize`, the same calibration, MatMul
# weights per tensor as ONNX Runtime's own tool makes them), so
# the peer runs the same quantized model. Each INT8 row also reports its output cosine against
# Kiln FP32 on held-out inputs (`kiln compare`). Run by bench/run_bench.sh after its FP32 table.
#
#   bench/run_precision_bench.sh
#   PRECISION_ROWS="resnet50:1" bench/run_precision_bench.sh
#   REPORT_ONLY=1 bench/run_precision_bench.sh   # redo the table and chart from results.tsv
#
# Calibration: 256 seeded random samples (normal images; random token ids for BERT), generated
# into the run folder and deleted afterwards. Writes bench/results/<date>-cpu-precision.md and
# <date>-cpu-precision/ (logs, JSON).
#
# Environment: KILN, MODELS, THREADS, KILN_DURATION, KILN_WARMUP_MS, ORT_DURATION, ORT_WARMUP_MS,
# SEQ, DATE, OUT_DIR as bench/run_bench.sh; PRECISION_ROWS (MODEL:BATCH ..., default
# "resnet50:1 mobilenet_v2:1 bert:1"), CALIB_SAMPLES (256).
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
ROWS="${PRECISION_ROWS:-resnet50:1 mobilenet_v2:1 bert:1}"
CALIB_SAMPLES="${CALIB_SAMPLES:-256}"
DATE="${DATE:-$(date +%F)}"
OUT_DIR="${OUT_DIR:-$here/results}"
PY=/usr/bin/python3

die() { echo "run_precision_bench: $*" >&2; exit 1; }
command -v node >/dev/null || die "node not found (run scripts/setup-bench.sh)"
command -v jq >/dev/null || die "jq not found (apt-get install jq)"
[ -x "$KILN" ] || die "$KILN missing (scripts/build.sh default kiln)"

run_dir="$OUT_DIR/$DATE-cpu-precision"
md="$OUT_DIR/$DATE-cpu-precision.md"
png="$OUT_DIR/$DATE-cpu-precision.png"
mkdir -p "$run_dir"
tsv="$run_dir/results.tsv"
# REPORT_ONLY=1: rewrite the table and chart from an existing results.tsv (rows appended by hand or
# by another run), without running anything.
[ "${REPORT_ONLY:-0}" = 1 ] && ROWS="" || printf 'model\tbatch\tvariant\tmedian_ms\titems_per_s\tcosine\tnote\n' >"$tsv"

shapes_for() {
  case "$1" in
    bert) echo "input_ids:${2}x$SEQ,attention_mask:${2}x$SEQ" ;;
    *) echo "input:${2}x3x224x224" ;;
  esac
}

# Seeded calibration / validation / held-out data for a model.
make_data() {  # MODEL FILE COUNT SEED
  $PY - "$1" "$2" "$3" "$4" "$SEQ" <<'EOF'
import sys, numpy as np
model, path, count, seed, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(seed)
if model == "bert":
    np.savez(path, input_ids=rng.integers(0, 30522, (count, seq)).astype(np.int64),
             attention_mask=np.ones((count, seq), np.int64))
else:
    np.savez(path, input=rng.standard_normal((count, 3, 224, 224)).astype(np.float32))
EOF
}

kiln_bench() {  # ENGINE NAME -> prints "median items_per_s"
  "$KILN" bench "$1" --threads "$THREADS" --warmup-ms "$KILN_WARMUP_MS" --duration "$KILN_DURATION" \
    --json "$run_dir/$2.json" >"$run_dir/$2.log" 2>&1 || { cat "$run_dir/$2.log" >&2; die "kiln bench $2 failed"; }
  echo "$(jq .latency_ms.median "$run_dir/$2.json") $(jq .throughput.items_per_s "$run_dir/$2.json")"
}

ort_bench() {  # MODEL.onnx SHAPES NAME
  node "$here/ort_bench.js" "$1" --shapes "$2" --threads "$THREADS" --warmup-ms "$ORT_WARMUP_MS" \
    --duration "$ORT_DURATION" --json "$run_dir/$3.json" >"$run_dir/$3.log" 2>&1 ||
    { cat "$run_dir/$3.log" >&2; die "ort_bench.js $3 failed"; }
  echo "$(jq .latency_ms.median "$run_dir/$3.json") $(jq .throughput.items_per_s "$run_dir/$3.json")"
}

cosine_of() {  # ENGINE NAME -> cosine of the first output vs Kiln FP32 on the held-out inputs
  "$KILN" compare "$1" --model "$model_path" --calib "$held" --batch "$b" --reference cpu --threads "$THREADS" --json \
    >"$run_dir/$2.compare.json" 2>"$run_dir/$2.compare.log" || true
  jq -r '[.outputs[]?.cosine] | min // "n/a"' "$run_dir/$2.compare.json" 2>/dev/null || echo n/a
}

for row in $ROWS; do
  m="${row%%:*}"
  b="${row##*:}"
  shapes="$(shapes_for "$m" "$b")"
  model_path="$MODELS/$m.onnx"
  [ -f "$model_path" ] || die "$model_path missing (scripts/export-models.sh)"
  echo "=== $m batch $b: precision rows"
  calib="$run_dir/$m.calib.npz"
  val="$run_dir/$m.val.npz"
  held="$run_dir/$m.held.npz"
  make_data "$m" "$calib" "$CALIB_SAMPLES" 1
  make_data "$m" "$val" 16 2
  make_data "$m" "$held" $((b > 8 ? b : 8)) 3
  common=(--shapes "$shapes" --threads "$THREADS" --timing-cache "$run_dir/timing-cache.json")
  "$KILN" build "$model_path" "${common[@]}" -o "$run_dir/$m-fp32.kiln" >"$run_dir/$m-fp32.build.log" 2>&1 ||
    die "fp32 build failed ($run_dir/$m-fp32.build.log)"
  "$KILN" build "$model_path" "${common[@]}" --bf16 -o "$run_dir/$m-bf16.kiln" >"$run_dir/$m-bf16.build.log" 2>&1 ||
    die "bf16 build failed ($run_dir/$m-bf16.build.log)"
  "$KILN" build "$model_path" "${common[@]}" --int8 --calib "$calib" --calib-cache "$run_dir/$m.calib" \
    -o "$run_dir/$m-int8.kiln" >"$run_dir/$m-int8.build.log" 2>&1 || die "int8 build failed ($run_dir/$m-int8.build.log)"
  "$KILN" build "$model_path" "${common[@]}" --int8 --calib "$calib" --calib-cache "$run_dir/$m.calib" \
    --accuracy-budget 1% --accuracy-metric cosine --validation "$val" --validation-samples 16 \
    -o "$run_dir/$m-int8g.kiln" >"$run_dir/$m-int8g.build.log" 2>&1 || die "guarded int8 build failed"
  kept="$(sed -n 's/.*with \([0-9]*\) of \([0-9]*\) layers kept in fp32.*/\1 of \2 layers kept fp32/p' "$run_dir/$m-int8g.build.log")"
  # ONNX Runtime runs MatMul with per-tensor weight scales (its quantize_static default) far faster
  # than per-column ones (BERT: 70 vs 124 ms), so its QDQ model gets those; convolutions stay per channel.
  "$KILN" quantize "$model_path" --calib "$calib" --calib-samples "$CALIB_SAMPLES" --matmul-weights per-tensor \
    -o "$run_dir/$m.qdq.onnx" \
    >"$run_dir/$m-quantize.log" 2>&1 || die "kiln quantize failed ($run_dir/$m-quantize.log)"

  read -r t ips <<<"$(kiln_bench "$run_dir/$m-fp32.kiln" "$m-b$b-kiln-fp32")"
  printf '%s\t%s\tKiln FP32\t%s\t%s\t1\t\n' "$m" "$b" "$t" "$ips" >>"$tsv"
  read -r t ips <<<"$(kiln_bench "$run_dir/$m-bf16.kiln" "$m-b$b-kiln-bf16")"
  printf '%s\t%s\tKiln BF16\t%s\t%s\t%s\t\n' "$m" "$b" "$t" "$ips" "$(cosine_of "$run_dir/$m-bf16.kiln" "$m-bf16")" >>"$tsv"
  read -r t ips <<<"$(kiln_bench "$run_dir/$m-int8.kiln" "$m-b$b-kiln-int8")"
  printf '%s\t%s\tKiln INT8 (all layers)\t%s\t%s\t%s\t\n' "$m" "$b" "$t" "$ips" "$(cosine_of "$run_dir/$m-int8.kiln" "$m-int8")" >>"$tsv"
  read -r t ips <<<"$(kiln_bench "$run_dir/$m-int8g.kiln" "$m-b$b-kiln-int8g")"
  printf '%s\t%s\tKiln INT8 + accuracy guard 1%%\t%s\t%s\t%s\t%s\n' "$m" "$b" "$t" "$ips" \
    "$(cosine_of "$run_dir/$m-int8g.kiln" "$m-int8g")" "${kept:-}" >>"$tsv"
  read -r t ips <<<"$(ort_bench "$model_path" "$shapes" "$m-b$b-ort-fp32")"
  printf '%s\t%s\tONNX Runtime FP32\t%s\t%s\t\t\n' "$m" "$b" "$t" "$ips" >>"$tsv"
  read -r t ips <<<"$(ort_bench "$run_dir/$m.qdq.onnx" "$shapes" "$m-b$b-ort-qdq")"
  printf '%s\t%s\tONNX Runtime on Kiln'"'"'s QDQ export\t%s\t%s\t\t\n' "$m" "$b" "$t" "$ips" >>"$tsv"
  column -t -s $'\t' "$tsv" | grep "^$m " | sed 's/^/  /'
  rm -f "$calib" "$val" "$held" "$run_dir"/*.kiln "$run_dir/$m.qdq.onnx"
done

cpu="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
{
  echo "# Kiln reduced precision vs ONNX Runtime (CPU), $DATE"
  echo
  echo "Machine: $cpu, $(nproc) CPUs, $THREADS threads for both runtimes. Median latency over ${KILN_DURATION} s (Kiln) / ${ORT_DURATION} s (ORT)."
  echo "Reproduce: \`PRECISION_ROWS=\"$ROWS\" bench/run_precision_bench.sh\` (also run at the end of \`bench/run_bench.sh\`)."
  echo
  echo "Calibration: $CALIB_SAMPLES seeded random samples, entropy method. Cosine: the engine's output vs Kiln FP32 on 8 held-out inputs (\`kiln compare --reference cpu\`; lowest over outputs). Random-weight models, so agreement, not accuracy (the digits test in tests/models/precision_model_test.cpp measures real accuracy)."
  echo
  echo "| model | batch | variant | median ms | items/s | speed-up vs Kiln FP32 | cosine vs FP32 | note |"
  echo "|---|---|---|---|---|---|---|---|"
  awk -F'\t' 'NR > 1 {
      key = $1 "/" $2
      if ($3 == "Kiln FP32") base[key] = $4
      rows[NR] = $0
    }
    END {
      for (i = 2; i <= NR; ++i) {
        split(rows[i], f, "\t")
        key = f[1] "/" f[2]
        if (f[6] ~ /^[0-9.]+$/) cv = sprintf("%.4f", f[6]); else cv = f[6]
        printf "| %s | %s | %s | %.2f | %.1f | %.2fx | %s | %s |\n", f[1], f[2], f[3], f[4], f[5], base[key] / f[4], cv, f[7]
      }
    }' "$tsv"
  echo
  echo "![speed-up over Kiln FP32]($(basename "$png"))"
} >"$md"
$PY "$here/make_precision_chart.py" "$tsv" "$png" --title "Kiln reduced precision vs ONNX Runtime, CPU, $THREADS threads, $DATE"
echo "wrote $md and $png"
