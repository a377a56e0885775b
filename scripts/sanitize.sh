#!/usr/bin/env bash
# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer (gcc): a separate build of
# the library, CLI and tests (CUDA/HIP and benchmarks off), then ctest with the sanitizers armed.
#   HETMOE_ASAN_DIR (default build-asan)
# Leak detection is off: LibTorch keeps its registries alive until exit by design. The oneDNN
# module is not loaded in this build (it needs RTLD_DEEPBIND, which ASan cannot work with), so
# the CPU GEMMs use LibTorch's BLAS here. Any sanitizer report fails the run (halt on error).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
build=${HETMOE_ASAN_DIR:-build-asan}
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$HETMOE_TORCH_CMAKE" -DHETMOE_PYTHON="$HETMOE_VENV/bin/python" \
  -DHETMOE_WITH_CUDA=OFF -DHETMOE_WITH_HIP=OFF -DHETMOE_BUILD_BENCHMARKS=OFF \
  -DCMAKE_CXX_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" \
  -DCMAKE_MODULE_LINKER_FLAGS="$san" >"$build.configure.log" 2>&1 ||
  { cat "$build.configure.log"; exit 1; }
cmake --build "$build" -j "${HETMOE_JOBS:-$(nproc)}"
echo "sanitize.sh: build took $(( $(date +%s) - start )) s"
export ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
ctest --output-on-failure -j "${HETMOE_JOBS:-$(nproc)}" --timeout 900
