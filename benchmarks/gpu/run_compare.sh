#!/usr/bin/env bash
# The accelerator comparison on a lent GPU (issue: benchmarks that compare accelerators): build
# the CLI with CUDA (as run_e2e.sh), then
#   - hetmoe bench on cpu and cuda for configs/bench-small.yaml (one hetmoe-bench/1 document);
#   - hetmoe check cpu vs cuda in fp32 over 200 steps with 10-step loss means (docs/benchmarks.md);
#   - scripts/compare_bench.py against the committed CPU result.
#   Carry .gpu-deps and data/fortunes. JSON and logs go to $OUT (or ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
source .gpu-deps/env.sh
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release $HETMOE_GPU_CMAKE_ARGS \
  -DHETMOE_WITH_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_dnnl=ON -DHETMOE_BUILD_TESTS=OFF \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target hetmoe_cli >"$out/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
hetmoe=build-gpu/src/hetmoe
$hetmoe bench --config configs/bench-small.yaml --backends cpu,cuda \
  --out "$out/bench-cpu-cuda.json" >"$out/bench.log" 2>&1
tail -30 "$out/bench.log"
$hetmoe check --config configs/bench-small.yaml --backends cpu,cuda --steps 200 \
  --loss-window 10 >"$out/check-cpu-cuda.log" 2>"$out/check-cpu-cuda.err"
echo "check exit: $?"
cat "$out/check-cpu-cuda.log"
python3 scripts/compare_bench.py benchmarks/results/2026-11-24-cpu/bench-cpu.json \
  "$out/bench-cpu-cuda.json" 2>&1 | tee "$out/compare.md" | head -40
