#!/usr/bin/env bash
# The GPU backend's tests and benchmarks, in two halves:
#   scripts/device-test.sh build     here (CUDA 13 toolkit under /usr/local/cuda): configures
#                                    build-cuda (Release, KILN_CUDA=ON), builds kiln, the module
#                                    libkiln_cuda.so, the GPU tests and the kernel benchmark, and
#                                    packs them with every non-system shared library they need
#                                    (protobuf, oneDNN, gRPC...; not the CUDA libraries) into
#                                    build-cuda/bundle.tar.xz;
#   scripts/device-test.sh run [WHAT...]
#                                    on the GPU machine, from the repository root, with
#                                    build-cuda/bundle.tar.xz carried. WHAT: kernels (module tests +
#                                    kernel benchmark), programs (GPU program tests; the digits
#                                    model, when exported here, travels for the INT8 real-data
#                                    test), models
#                                    (exports models/export.py's models there, then the model
#                                    accuracy test), bench (bench/gpu/run_bench.sh: Kiln and
#                                    PyTorch side by side), accuracy (PyTorch's own FP16 error on the
#                                    same models), serve (KIND_GPU serving tests, then
#                                    bench/gpu/serve_bench.sh: one GPU against every GPU),
#                                    engines (bench/gpu/engine_bench.sh: GPU engine files built
#                                    with a timing cache, loaded, benched and compared),
#                                    guard (bench/gpu/int8_guard.sh: the INT8 accuracy guard on
#                                    exported CNNs), exec CMD... (a command in this environment);
#                                    default: kernels programs models.
# Logs go to out/device, packed into $OUT/device-results.tgz when $OUT is set. The GPU machine provides the CUDA runtime and cuBLASLt
# (/usr/local/cuda) and cuDNN (the nvidia-cudnn Python package); PyTorch there exports the models.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  build)
    nvcc="${NVCC:-/usr/local/cuda/bin/nvcc}"
    [ -x "$nvcc" ] || { echo "device-test: no nvcc at $nvcc (set NVCC)" >&2; exit 1; }
    cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON -DKILN_PYTHON=OFF \
      -DCMAKE_CUDA_COMPILER="$nvcc" >/dev/null
    ninja -C build-cuda -j"${KILN_JOBS:-2}" kiln kiln_cuda kiln_cuda_tests kiln_cuda_bench kiln_gpu_tests
    rm -rf build-cuda/bin && mkdir -p build-cuda/bin/lib
    cp build-cuda/kiln build-cuda/kiln_gpu_tests build-cuda/bin/
    cp build-cuda/src/backends/cuda/{libkiln_cuda.so,kiln_cuda_tests,kiln_cuda_bench} build-cuda/bin/
    strip build-cuda/bin/kiln build-cuda/bin/kiln_gpu_tests
    # Shared libraries from Debian packages that a stock CUDA image lacks; the C/C++ runtime and
    # the CUDA libraries come from the GPU machine.
    for bin in build-cuda/bin/kiln build-cuda/bin/kiln_gpu_tests build-cuda/bin/libkiln_cuda.so; do
      ldd "$bin" | awk '$3 ~ /^\// {print $3}'
    done | sort -u | grep -v -E '/(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux[^/]*)\.so|/(libcuda|libcudart|libcublas|libcublasLt|libcudnn[a-z_]*)\.so' |
      while read -r lib; do cp -L "$lib" build-cuda/bin/lib/; done
    # The digits model trained on real data (models/digits.py needs scikit-learn, which the GPU
    # machine lacks), for the GPU's INT8 real-data test.
    digits="${KILN_MODEL_DIR:-$HOME/.cache/kiln/models}"
    if [ -f "$digits/digits.onnx" ]; then
      mkdir -p build-cuda/bin/models
      cp "$digits"/digits.onnx "$digits"/digits_train.npz "$digits"/digits_test.npz build-cuda/bin/models/
    fi
    tar -C build-cuda -cJf build-cuda/bundle.tar.xz bin
    echo "device-test: build-cuda/bundle.tar.xz ($(du -h build-cuda/bundle.tar.xz | cut -f1)); carry it to the GPU machine"
    ;;
  run)
    shift
    # Everything is written to out/device and packed into $OUT/device-results.tgz at the end: the
    # device tool brings back only a few files from $OUT, so they travel as one.
    out=out/device
    mkdir -p "$out"
    [ -f build-cuda/bundle.tar.xz ] && tar -C build-cuda -xJf build-cuda/bundle.tar.xz
    nvlibs=$(python3 - <<'EOF' 2>/dev/null || true
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except Exception:
    roots = []
print(":".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "*", "lib", "*.so*"))})))
EOF
)
    export LD_LIBRARY_PATH="$PWD/build-cuda/bin:$PWD/build-cuda/bin/lib:/usr/local/cuda/lib64:${nvlibs}:${LD_LIBRARY_PATH:-}"
    export KILN_CUDA_MODULE="$PWD/build-cuda/bin/libkiln_cuda.so"
    what=("$@")
    [ ${#what[@]} -eq 0 ] && what=(kernels programs models)
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$out/gpu.txt"
    rc=0
    while [ ${#what[@]} -gt 0 ]; do
      w="${what[0]}"
      what=("${what[@]:1}")
      case "$w" in
        exec)  # the rest of the arguments: one command, run with the bundle's environment
          "${what[@]}" || rc=1
          what=() ;;
        kernels)
          build-cuda/bin/kiln_cuda_tests --gtest_output=xml:"$out/cuda_tests.xml" > "$out/cuda_tests.log" 2>&1 || rc=1
          grep -E "^\[ *(FAILED|PASSED|SKIPPED) *\]|Failure|Expected|Which is" "$out/cuda_tests.log" | head -40
          build-cuda/bin/kiln_cuda_bench > "$out/cuda_bench.txt" 2>&1 || rc=1
          tail -5 "$out/cuda_bench.txt" ;;
        programs)
          KILN_MODEL_DIR="$([ -d build-cuda/bin/models ] && echo build-cuda/bin/models)" build-cuda/bin/kiln_gpu_tests --gtest_output=xml:"$out/gpu_tests.xml" > "$out/gpu_tests.log" 2>&1 || rc=1
          grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure|Expected|Which is|error" "$out/gpu_tests.log" | head -60 ;;
        models)
          models="${KILN_GPU_MODELS:-resnet50,mobilenet_v2,bert,gpt,vit_b16_2layer}"
          python3 models/export.py --out /tmp/kiln-models --models "$models" > "$out/export.log" 2>&1 || { rc=1; tail -20 "$out/export.log"; }
          KILN_MODEL_DIR=/tmp/kiln-models build-cuda/bin/kiln_gpu_tests --gtest_filter='*ExportedModels*' \
            > "$out/gpu_models.log" 2>&1 || rc=1
          grep -E "\[ model \]|^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure|Expected|Which is" "$out/gpu_models.log" | head -60 ;;
        bench)
          bash bench/gpu/run_bench.sh "$out" || rc=1 ;;
        serve)  # kiln serve with KIND_GPU instances: one GPU against every GPU (bench/gpu/serve_bench.sh)
          build-cuda/bin/kiln_gpu_tests --gtest_filter='*ServeGpu*' > "$out/serve_gpu_tests.log" 2>&1 || rc=1
          grep -E "^\[ *(OK|FAILED|PASSED|SKIPPED) *\]|Failure|Expected|Which is" "$out/serve_gpu_tests.log" | head -20
          bash bench/gpu/serve_bench.sh "$out/serve" || rc=1 ;;
        guard)  # the INT8 accuracy guard on exported CNNs (bench/gpu/int8_guard.sh)
          bash bench/gpu/int8_guard.sh "$out/guard" 2>&1 | tee "$out/guard.txt" || rc=1 ;;
        engines)  # GPU engine files: build with a timing cache, inspect, bench and run them (bench/gpu/engine_bench.sh)
          bash bench/gpu/engine_bench.sh "$out/engines" 2>&1 | tee "$out/engines.txt" || rc=1 ;;
        accuracy)  # PyTorch's own FP16 error on the same models (the yardstick for Kiln's)
          python3 bench/gpu/torch_accuracy.py --models "${KILN_GPU_MODELS:-resnet50,mobilenet_v2,bert,gpt}" \
            --json "$out/torch_accuracy.json" 2>&1 | tail -8 || rc=1 ;;
        *) echo "device-test: unknown part '$w' (kernels, programs, models, accuracy, bench, serve, engines, guard, exec CMD...)" >&2; exit 2 ;;
      esac
    done
    if [ -n "${OUT:-}" ]; then tar -C "$out" -czf "$OUT/device-results.tgz" . && cp "$out"/*.txt "$OUT"/ 2>/dev/null; fi
    exit "$rc"
    ;;
  *)
    echo "usage: scripts/device-test.sh build | run [kernels|programs|models|bench ...]" >&2
    exit 2
    ;;
esac
