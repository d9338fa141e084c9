#!/usr/bin/env bash
# Batches on the CPU engine, split into one-thread sub-batches (the default) against one program
# over every thread (--no-batch-split), with ONNX Runtime at the same batch as the peer, in one run
# on one machine. Writes bench/results/<date>-batch-split.md (table), .png (chart) and
# <date>-batch-split/ (every JSON and log).
#
#   bench/run_batch_split_bench.sh              # about 10 minutes on 2 cores
#   MODELS_LIST=mobilenet_v2 BATCHES="1 16" bench/run_batch_split_bench.sh
#
# Each model is built once (kiln build, batch profile 1..MAX_BATCH, tactics timed at OPT_BATCH);
# each batch is then timed three ways on that engine and on the ONNX model. Same thread count for
# all (THREADS, default the core count).
#
# Environment: KILN (build/kiln), MODELS (~/.cache/kiln/models), MODELS_LIST ("mobilenet_v2
# resnet50"; image models of input INPUT ("input") [N,3,224,224]), BATCHES ("1 4 16 32"), MAX_BATCH (32), OPT_BATCH (16), THREADS (cores), DURATION
# (3 s per configuration), DATE, OUT_DIR.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cd "$repo"

KILN="${KILN:-$repo/build/kiln}"
MODELS="${MODELS:-$HOME/.cache/kiln/models}"
MODELS_LIST="${MODELS_LIST:-mobilenet_v2 resnet50}"
INPUT="${INPUT:-input}"
BATCHES="${BATCHES:-1 4 16 32}"
MAX_BATCH="${MAX_BATCH:-32}"
OPT_BATCH="${OPT_BATCH:-16}"
THREADS="${THREADS:-$(nproc)}"
DURATION="${DURATION:-3}"
DATE="${DATE:-$(date +%F)}"
OUT_DIR="${OUT_DIR:-$here/results}"
PY=/usr/bin/python3

die() { echo "run_batch_split_bench: $*" >&2; exit 1; }
[ -x "$KILN" ] || die "no kiln binary at $KILN (scripts/build.sh default)"
command -v jq >/dev/null || die "jq is missing (scripts/setup.sh installs it)"
[ -d "$here/node_modules/onnxruntime-node" ] || die "onnxruntime-node is missing (scripts/setup.sh installs it)"

out="$OUT_DIR/$DATE-batch-split"
rm -rf "$out"
mkdir -p "$out"
tsv="$out/results.tsv"
printf 'model\tbatch\tsplit_items_per_s\twhole_items_per_s\tort_items_per_s\tsub_batch\tsplit_median_ms\twhole_median_ms\tort_median_ms\n' >"$tsv"
load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

for m in $MODELS_LIST; do
  [ -f "$MODELS/$m.onnx" ] || die "no $MODELS/$m.onnx (scripts/export-models.sh)"
  shape() { echo "$INPUT:${1}x3x224x224"; }
  engine="$out/$m.kiln"
  echo "=== $m: build (batch 1..$MAX_BATCH, tactics at $OPT_BATCH, $THREADS threads)"
  "$KILN" build "$MODELS/$m.onnx" --min-shapes "$(shape 1)" --opt-shapes "$(shape "$OPT_BATCH")" \
    --max-shapes "$(shape "$MAX_BATCH")" --threads "$THREADS" -o "$engine" >"$out/$m.build.log" 2>&1 ||
    { cat "$out/$m.build.log" >&2; die "kiln build failed on $m"; }
  for b in $BATCHES; do
    base="$out/$m-b$b"
    "$KILN" bench "$engine" --shapes "$(shape "$b")" --threads "$THREADS" --duration "$DURATION" \
      --json "$base.split.json" >"$base.split.log" 2>&1 || { cat "$base.split.log" >&2; die "kiln bench failed"; }
    "$KILN" bench "$engine" --shapes "$(shape "$b")" --threads "$THREADS" --duration "$DURATION" --no-batch-split \
      --json "$base.whole.json" >"$base.whole.log" 2>&1 || { cat "$base.whole.log" >&2; die "kiln bench failed"; }
    node "$here/ort_bench.js" "$MODELS/$m.onnx" --shapes "$(shape "$b")" --threads "$THREADS" \
      --duration "$DURATION" --json "$base.ort.json" >"$base.ort.log" 2>&1 ||
      { cat "$base.ort.log" >&2; die "ort_bench.js failed"; }
    row="$(printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s' "$m" "$b" \
      "$(jq .throughput.items_per_s "$base.split.json")" "$(jq .throughput.items_per_s "$base.whole.json")" \
      "$(jq .throughput.items_per_s "$base.ort.json")" "$(jq .batch_split.sub_batch "$base.split.json")" \
      "$(jq .latency_ms.median "$base.split.json")" "$(jq .latency_ms.median "$base.whole.json")" \
      "$(jq .latency_ms.median "$base.ort.json")")"
    echo "$row" >>"$tsv"
    echo "  batch $b: $(echo "$row" | awk -F'\t' '{printf "split %.1f, whole %.1f, ort %.1f images/s (sub-batch %s)", $3, $4, $5, $6}')"
  done
  rm -f "$engine"
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

cpu_model="$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit (with uncommitted changes)"; fi
ort_version="$(jq -r .ort_version "$(ls "$out"/*.ort.json | head -1)")"
md="$OUT_DIR/$DATE-batch-split.md"
{
  echo "# CPU batches as one-thread sub-batches against one program ($DATE)"
  echo
  echo "Machine: $cpu_model, $(nproc) CPUs, $THREADS threads for every engine. Kiln $commit; ONNX Runtime $ort_version (onnxruntime-node, CPU EP)."
  echo "Load average at start $load_start, at end $load_end."
  echo
  echo "Reproduce: \`MODELS_LIST=\"$MODELS_LIST\" BATCHES=\"$BATCHES\" DURATION=$DURATION bench/run_batch_split_bench.sh\`"
  echo
  echo "Each model is one engine (\`kiln build\`, batch profile 1..$MAX_BATCH, tactics timed at batch $OPT_BATCH), timed at each batch as sub-batches (the default) and with \`--no-batch-split\`; ONNX Runtime runs the ONNX model at the same batch and thread count. Throughput in images/s; at least ${DURATION} s each."
  echo
  echo "| model | batch | Kiln split | Kiln whole | ONNX Runtime | split / whole | split / ORT | sub-batch |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  tail -n +2 "$tsv" | awk -F'\t' '{printf "| %s | %s | %.1f | %.1f | %.1f | %.2fx | %.2fx | %s |\n", $1, $2, $3, $4, $5, $3/$4, $3/$5, ($6 == 0 ? "not split" : $6)}'
} >"$md"
"$PY" - "$tsv" "$OUT_DIR/$DATE-batch-split.png" <<'EOF'
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
models = list(dict.fromkeys(r["model"] for r in rows))
fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
for ax, m in zip(axes[0], models):
    rs = [r for r in rows if r["model"] == m]
    xs = range(len(rs))
    w = 0.27
    for i, (key, label) in enumerate([("split_items_per_s", "Kiln, sub-batches"), ("whole_items_per_s", "Kiln, one program"),
                                      ("ort_items_per_s", "ONNX Runtime")]):
        ax.bar([x + (i - 1) * w for x in xs], [float(r[key]) for r in rs], w, label=label)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(["batch " + r["batch"] for r in rs])
    ax.set_ylabel("images/s")
    ax.set_title(m)
handles, labels = axes[0][0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=9)
fig.tight_layout(rect=(0, 0.07, 1, 1))
fig.savefig(sys.argv[2], dpi=110)
EOF
echo "wrote $md, $OUT_DIR/$DATE-batch-split.png and $out/"
