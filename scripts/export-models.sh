#!/usr/bin/env bash
# Exports the test models into a cache folder (default ~/.cache/kiln/models) with Debian's
# python3 and torch, then trains the handwritten-digits accuracy model (models/digits.py, which
# also needs scikit-learn) into the same folder. Exits 77 (skip) when torch is not available.
# Models whose files exist are skipped by both scripts.
set -euo pipefail
out="${1:-$HOME/.cache/kiln/models}"
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! /usr/bin/python3 -c "import torch, torchvision, onnx" 2>/dev/null; then
  echo "SKIP: Debian's /usr/bin/python3 lacks torch/torchvision/onnx (run scripts/setup.sh)"
  exit 77
fi
mkdir -p "$out"
status=0
/usr/bin/python3 "$here/models/export.py" --out "$out" --set all || status=$?
/usr/bin/python3 "$here/models/pytorch_qdq.py" --out "$out" || status=$?
if /usr/bin/python3 -c "import sklearn" 2>/dev/null; then
  /usr/bin/python3 "$here/models/digits.py" --out "$out" || status=$?
else
  echo "SKIP: digits model: Debian's /usr/bin/python3 lacks scikit-learn (python3-sklearn; run scripts/setup.sh)"
fi
exit "$status"
