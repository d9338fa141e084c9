#!/usr/bin/env bash
# Runs the whole test suite: the default build (unit, conformance and real-model tests), the
# same unit and conformance tests under AddressSanitizer + UBSan, and a short deterministic
# fuzzing run of the loaders. `--quick` runs only the default build's tests.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
[ "${1:-}" = "--quick" ] && quick=1
jobs="${KILN_JOBS:-$(nproc)}"

echo "== build (default preset)"
scripts/build.sh default
echo "== tests (default preset)"
ctest --preset default -j "$jobs" -LE soak

if [ "$quick" = 1 ]; then exit 0; fi

# The server soak test (ten minutes of mixed traffic against `kiln serve`) checks correctness, not
# speed, so it runs in the background while the sanitizer build compiles.
echo "== soak (kiln serve, ${KILN_SOAK_SECONDS:-600} s, in the background)"
soak_log="$(mktemp)"
ctest --preset default -L soak -V >"$soak_log" 2>&1 &
soak_pid=$!

echo "== build (asan preset: AddressSanitizer + UndefinedBehaviorSanitizer)"
scripts/build.sh asan kiln kiln_unit_tests kiln_conformance
echo "== tests (asan preset: unit and conformance)"
# Real models run in the default preset; under the sanitizers they would take many minutes, so
# the unit tests that use them skip here (KILN_MODEL_DIR empty).
KILN_MODEL_DIR= ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --preset asan -j "$jobs" -L "unit|conformance"

echo "== fuzz (libFuzzer, fixed seed and run count)"
scripts/fuzz.sh

echo "== soak (result)"
soak_rc=0
wait "$soak_pid" || soak_rc=$?
grep -E "soak:|PROBLEM|tests passed|Failed" "$soak_log" || cat "$soak_log"
exit "$soak_rc"
