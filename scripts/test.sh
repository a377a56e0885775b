#!/usr/bin/env bash
# Installs what hetmoe needs, builds everything (the CUDA backend and the HIP kernel check too,
# where nvcc/hipcc exist) and runs the whole test suite with ctest.
#   HETMOE_BUILD_DIR (default build-test)   HETMOE_JOBS (default: nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
source scripts/env.sh

build=${HETMOE_BUILD_DIR:-build-test}
jobs=${HETMOE_JOBS:-$(nproc)}
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$HETMOE_TORCH_CMAKE" -DHETMOE_PYTHON="$HETMOE_VENV/bin/python" \
  ${HETMOE_CMAKE_ARGS:-} >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
grep -E "hetmoe backends" "$build.configure.log" || true
cmake --build "$build" -j "$jobs"
echo "test.sh: build took $(( $(date +%s) - start )) s"
cd "$build"
ctest --output-on-failure -j "$jobs" --timeout 900
