#!/usr/bin/env bash
# Installs what bench/run_bench.sh needs beyond scripts/setup.sh:
#   - onnxruntime-node into bench/node_modules (the ONNX Runtime peer, CPU execution provider),
#   - python3-matplotlib (Debian) for bench/make_chart.py.
# Idempotent. onnxruntime-node is installed with --ignore-scripts: its post-install step only
# downloads optional GPU binaries (and fails without network access to GitHub); the npm package
# itself ships the native CPU binding and libonnxruntime for linux/x64 and linux/arm64.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bench="$here/bench"

# --- Debian packages.
PACKAGES=(nodejs npm python3-matplotlib)
missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # node/npm may come from somewhere other than Debian (nodesource, nvm): accept them if present.
    case "$p" in
      nodejs) command -v node >/dev/null && continue ;;
      npm) command -v npm >/dev/null && continue ;;
    esac
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup-bench: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
/usr/bin/python3 -c "import matplotlib" || { echo "setup-bench: matplotlib still missing" >&2; exit 1; }

# --- onnxruntime-node (version pinned in bench/package.json).
cd "$bench"
if ! node -e "require('onnxruntime-node')" 2>/dev/null; then
  echo "setup-bench: npm install --ignore-scripts (bench/node_modules)"
  npm install --ignore-scripts --no-audit --no-fund
fi
if ! node -e "require('onnxruntime-node')"; then
  echo "setup-bench: onnxruntime-node is installed but cannot be loaded; files under its bin/:" >&2
  find node_modules/onnxruntime-node/bin -maxdepth 5 2>/dev/null >&2 || true
  exit 1
fi
node -e "const o=require('onnxruntime-node'); console.log('setup-bench: onnxruntime-node ' + require('onnxruntime-node/package.json').version + ' OK (backends: ' + Object.keys(o.env.versions||{}).join(',') + ')')" || true
echo "setup-bench: done"
