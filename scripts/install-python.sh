#!/usr/bin/env bash
# Builds the Python package kiln from this checkout and installs it (no PyPI):
#   scripts/install-python.sh [--prefix DIR] [--build-dir DIR] [--no-build]
# DIR receives kiln/ (the package and its extension); default: the user site-packages of
# /usr/bin/python3 (`python3 -m site --user-site`). The build reuses build/ when it is configured.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/install-python.sh [--prefix DIR] [--build-dir DIR] [--no-build]"
  echo "  --prefix DIR     install kiln/ into DIR (default: the user site-packages of \$KILN_PYTHON)"
  echo "  --build-dir DIR  CMake build directory to build in (default: build)"
  echo "  --no-build       install what DIR/python/kiln already holds, without configuring or building"
  echo "  KILN_PYTHON      the Python to build for (default: /usr/bin/python3); KILN_JOBS: parallel jobs"
}

python="${KILN_PYTHON:-/usr/bin/python3}"
prefix=""
build_dir="build"
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { usage >&2; exit 2; }; prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#*=}"; shift ;;
    --build-dir) [ $# -ge 2 ] || { usage >&2; exit 2; }; build_dir="$2"; shift 2 ;;
    --build-dir=*) build_dir="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install-python.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

if [ ! -x "$python" ]; then
  echo "install-python.sh: error: $python not found (set KILN_PYTHON)" >&2
  exit 1
fi
if [ -z "$prefix" ]; then
  prefix="$("$python" -m site --user-site)"
fi
jobs="${KILN_JOBS:-$(nproc)}"

# Configure once (Ninja, like the presets); later runs only make sure the package is enabled.
if [ "$build" = 1 ]; then
  if [ ! -f "$build_dir/CMakeCache.txt" ]; then
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKILN_PYTHON=ON \
      -DKILN_PYTHON_EXECUTABLE="$python" >/dev/null
  else
    cmake -S . -B "$build_dir" -DKILN_PYTHON=ON -DKILN_PYTHON_EXECUTABLE="$python" >/dev/null
  fi
  cmake --build "$build_dir" -j "$jobs" --target kiln_python_package
fi

shopt -s nullglob
built=("$build_dir"/python/kiln/*.py "$build_dir"/python/kiln/_kiln*.so)
if [ ${#built[@]} -lt 2 ]; then
  echo "install-python.sh: error: the build left no package in $build_dir/python/kiln" >&2
  exit 1
fi
mkdir -p "$prefix/kiln"
rm -f "$prefix"/kiln/_kiln*.so  # an extension built for another Python or version
cp "${built[@]}" "$prefix/kiln/"

# Import it from elsewhere than the checkout, as a user would.
version="$(cd / && PYTHONPATH="$prefix" "$python" -c 'import kiln; print(kiln.__version__)')"
echo "install-python.sh: installed kiln $version in $prefix/kiln"
if ! (cd / && "$python" -c 'import sys; sys.exit(0 if sys.argv[1] in sys.path else 1)' "$prefix"); then
  echo "install-python.sh: $prefix is not on $python's path: add it to PYTHONPATH"
fi
