# Sourced by the single-purpose GPU scripts (run_e2e.sh, run_compare.sh): $OUT (default
# ./gpu-out) for logs and JSON, the carried dependencies, and gpu_build TARGET... which
# configures build-gpu with the CUDA backend (no tests, no oneDNN) and builds those targets.
out=${OUT:-gpu-out}
mkdir -p "$out"
source .gpu-deps/env.sh
gpu_build() {
  local t0
  t0=$(date +%s)
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release $HETMOE_GPU_CMAKE_ARGS \
    -DHETMOE_WITH_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_dnnl=ON -DHETMOE_BUILD_TESTS=OFF \
    >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
  local targets=()
  for t in "$@"; do targets+=(--target "$t"); done
  cmake --build build-gpu -j 16 "${targets[@]}" >"$out/build.log" 2>&1 ||
    { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
  echo "build: $(( $(date +%s) - t0 )) s"
}
