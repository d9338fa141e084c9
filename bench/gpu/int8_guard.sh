#!/usr/bin/env bash
# The GPU INT8 accuracy guard on exported CNNs (run by `scripts/device-test.sh run guard`): per
# model, calibration data (64 images) and validation data (64 other images) drawn from N(0, 1);
# `kiln build --device cuda` in FP16, in INT8 (INT8 where timing says it is faster), and in INT8
# with `--accuracy-budget 1% --accuracy-metric cosine` (the guard's report gives the accuracy with
# every candidate in INT8 and with the layers it keeps in FP16); then the three engines run on a
# third, held-out batch, compared with ONNX Runtime FP32, and `kiln bench` times them.
# Usage: bench/gpu/int8_guard.sh OUT_DIR   (env KILN_GUARD_MODELS="resnet50:32 mobilenet_v2:32")
set -uo pipefail
out="$1"
mkdir -p "$out"
models=/tmp/kiln-models
rows="${KILN_GUARD_MODELS:-resnet50:32 mobilenet_v2:32}"
need=$(for r in $rows; do echo "${r%%:*}"; done | sort -u | paste -sd, -)
python3 models/export.py --out "$models" --models "$need" > "$out/export.log" 2>&1 || { tail -20 "$out/export.log"; exit 1; }
rc=0
for r in $rows; do
  name="${r%%:*}"; b="${r##*:}"
  shapes="input:${b}x3x224x224"
  tag="${name}_${b}"
  python3 - "$out" "$tag" "$b" <<'PY' || rc=1
import sys, numpy as np
out, tag, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, seed, n in (("calib", 1, 64), ("val", 2, 64), ("test", 3, b)):
    x = np.random.default_rng(seed).standard_normal((n, 3, 224, 224), dtype=np.float32)
    np.savez(f"/tmp/{tag}_{name}.npz", input=x)
PY
  cache="/tmp/$tag.cache.json"; rm -f "$cache"
  for kind in fp16 int8 guard; do
    args="--precision fp16"
    [ "$kind" = int8 ] && args="--precision int8 --calib /tmp/${tag}_calib.npz"
    [ "$kind" = guard ] && args="--precision int8 --calib /tmp/${tag}_calib.npz --validation /tmp/${tag}_val.npz --accuracy-budget 1% --accuracy-metric cosine"
    s=$EPOCHREALTIME
    build-cuda/bin/kiln build "$models/$name.onnx" --device cuda --shapes "$shapes" -o "/tmp/${tag}_$kind.kiln" \
      --timing-cache "$cache" $args > "$out/build_${tag}_$kind.txt" 2>&1 || rc=1
    e=$EPOCHREALTIME
    echo "$tag $kind build: $(awk "BEGIN{printf \"%.1f\", $e - $s}") s"
    grep -E "^(int8|guard): " -A2 "$out/build_${tag}_$kind.txt" | head -4
    build-cuda/bin/kiln run "/tmp/${tag}_$kind.kiln" --device cuda -i "/tmp/${tag}_test.npz" -o "/tmp/${tag}_$kind" \
      > "$out/run_${tag}_$kind.txt" 2>&1 || rc=1
    build-cuda/bin/kiln bench "/tmp/${tag}_$kind.kiln" --device cuda --warmup-ms 300 --duration 1 \
      --json "$out/bench_${tag}_$kind.json" > "$out/bench_${tag}_$kind.txt" 2>&1 || rc=1
    echo "$tag $kind: $(grep -E '^GPU compute' "$out/bench_${tag}_$kind.txt" | head -1)"
  done
  python3 - "$tag" "$name" "$models" <<'PY' 2>&1 | tee "$out/accuracy_$tag.txt" || rc=1
import sys, glob, numpy as np, onnxruntime as ort
tag, name, models = sys.argv[1:4]
x = np.load(f"/tmp/{tag}_test.npz")["input"]
# The reference: ONNX Runtime (CPU, FP32) on the same ONNX model and held-out images.
sess = ort.InferenceSession(f"{models}/{name}.onnx", providers=["CPUExecutionProvider"])
want = sess.run(None, {"input": x})[0].astype(np.float64)
for kind in ("fp16", "int8", "guard"):
    got = np.load(glob.glob(f"/tmp/{tag}_{kind}/*.npy")[0]).astype(np.float64)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    cos = float((got * want).sum() / np.sqrt((got * got).sum() * (want * want).sum()))
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    print(f"{tag} {kind} vs ONNX Runtime FP32 on {len(x)} held-out images: rel L2 {rel:.3e}, cosine {cos:.5f}, top-1 agreement {top1:.3f}")
PY
done
exit "$rc"
