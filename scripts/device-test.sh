#!/usr/bin/env bash
# The GPU backend's tests and microbenchmarks, in two halves:
#   scripts/device-test.sh build   here (CUDA 13 toolkit under /usr/local/cuda): configures
#                                  build-cuda with KILN_CUDA=ON and builds libkiln_cuda.so, the test
#                                  binary and the benchmark (sm_90a, sm_90, sm_80);
#   scripts/device-test.sh run     on the GPU machine, from the repository root, with build-cuda/bin
#                                  carried: prints the GPU, runs every GPU test, then the benchmark;
#                                  logs go to $OUT (or out/device) as well.
# With the device tool: build here, then run `bash scripts/device-test.sh run` there with
# carry ["build-cuda/bin"]. The binaries need only the CUDA runtime and cuBLASLt, which the GPU
# machine's toolkit provides (GoogleTest is linked statically).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    nvcc="${NVCC:-/usr/local/cuda/bin/nvcc}"
    [ -x "$nvcc" ] || { echo "device-test: no nvcc at $nvcc (set NVCC)" >&2; exit 1; }
    cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_PYTHON=OFF \
      -DCMAKE_CUDA_COMPILER="$nvcc" >/dev/null
    ninja -C build-cuda -j"${KILN_JOBS:-2}" kiln_cuda_tests kiln_cuda_bench
    mkdir -p build-cuda/bin
    cp build-cuda/src/backends/cuda/{libkiln_cuda.so,kiln_cuda_tests,kiln_cuda_bench} build-cuda/bin/
    echo "device-test: built build-cuda/bin ($(du -sh build-cuda/bin | cut -f1)); carry it to the GPU machine"
    ;;
  run)
    out="${OUT:-out/device}"
    mkdir -p "$out"
    export LD_LIBRARY_PATH="$PWD/build-cuda/bin:/usr/local/cuda/lib64:/usr/local/cuda/lib:${LD_LIBRARY_PATH:-}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
    rc=0
    set -o pipefail
    build-cuda/bin/kiln_cuda_tests --gtest_output=xml:"$out/cuda_tests.xml" 2>&1 | tee "$out/cuda_tests.log" | \
      grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|error|Expected|Which is|rel_error" || rc=$?
    build-cuda/bin/kiln_cuda_bench 2>&1 | tee "$out/cuda_bench.txt" || rc=$?
    exit "$rc"
    ;;
  *)
    echo "usage: scripts/device-test.sh build|run" >&2
    exit 2
    ;;
esac
