#!/usr/bin/env bash
# Installs every Debian package Kiln needs to build, test and export its test models.
# Idempotent: packages already present are not reinstalled, and apt's index is refreshed only
# when something is missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config
  libprotobuf-dev protobuf-compiler libonnx-dev libonnx-testdata libdnnl-dev
  libzip-dev zlib1g-dev libcli11-dev nlohmann-json3-dev libflatbuffers-dev flatbuffers-compiler
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev libomp-14-dev
  python3 python3-numpy python3-onnx python3-torch python3-torchvision python3-sklearn
  python3-dev pybind11-dev python3-yaml
  libcpp-httplib-dev libgrpc++-dev protobuf-compiler-grpc curl python3-grpcio python3-grpc-tools
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
else
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# ONNX Runtime (onnxruntime-node, from npm) is optional: `kiln compare --onnxrt` and its tests use
# it when present and skip with a message when not. Installing it is best effort, so a machine
# without npm or without access to its registry still builds and tests everything else.
here="$(cd "$(dirname "$0")/.." && pwd)"
if command -v node >/dev/null && (cd "$here/bench" && node -e "require('onnxruntime-node')" 2>/dev/null); then
  echo "setup: onnxruntime-node present"
elif command -v npm >/dev/null; then
  echo "setup: npm install --ignore-scripts onnxruntime-node (bench/node_modules)"
  (cd "$here/bench" && npm install --ignore-scripts --no-audit --no-fund >/dev/null 2>&1) ||
    echo "setup: WARNING: npm install failed; the ONNX Runtime comparisons will be skipped"
else
  echo "setup: no npm: the ONNX Runtime comparisons will be skipped (scripts/setup-bench.sh installs it)"
fi
echo "setup: done"
