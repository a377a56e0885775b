#!/usr/bin/env bash
# The accelerator comparison on a lent GPU (issue: benchmarks that compare accelerators): build
# the CLI with CUDA (as run_e2e.sh), then
#   - hetmoe bench on cpu and cuda for configs/bench-small.yaml (one hetmoe-bench/1 document);
#   - hetmoe check cpu vs cuda in fp32 over 200 steps with 10-step loss means (docs/benchmarks.md);
#   - scripts/compare_bench.py against the committed CPU result.
#   Carry .gpu-deps and data/fortunes. JSON and logs go to $OUT (or ./gpu-out).
set -uo pipefail
source benchmarks/gpu/common.sh
gpu_build hetmoe_cli
hetmoe=build-gpu/src/hetmoe
$hetmoe bench --config configs/bench-small.yaml --backends cpu,cuda \
  --out "$out/bench-cpu-cuda.json" --overwrite >"$out/bench.log" 2>&1
tail -30 "$out/bench.log"
$hetmoe check --config configs/bench-small.yaml --backends cpu,cuda --steps 200 \
  --loss-window 10 >"$out/check-cpu-cuda.log" 2>"$out/check-cpu-cuda.err"
echo "check exit: $?"
cat "$out/check-cpu-cuda.log"
python3 scripts/compare_bench.py benchmarks/results/2026-11-24-cpu/bench-cpu.json \
  "$out/bench-cpu-cuda.json" 2>&1 | tee "$out/compare.md" | head -40
