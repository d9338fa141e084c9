#!/usr/bin/env bash
# Exports the test models into a cache folder (default ~/.cache/kiln/models) with Debian's
# python3 and torch. Exits 77 (skip) when torch is not available.
set -euo pipefail
out="${1:-$HOME/.cache/kiln/models}"
here="$(cd "$(dirname "$0")/.." && pwd)"
if ! /usr/bin/python3 -c "import torch, torchvision, onnx" 2>/dev/null; then
  echo "SKIP: Debian's /usr/bin/python3 lacks torch/torchvision/onnx (run scripts/setup.sh)"
  exit 77
fi
mkdir -p "$out"
exec /usr/bin/python3 "$here/models/export.py" --out "$out" --set all
