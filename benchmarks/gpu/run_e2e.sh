#!/usr/bin/env bash
# End-to-end training throughput on a lent GPU: build with CUDA (as run_on_gpu.sh), then train
# configs/ling-lite-4l.yaml (Ling-Lite layer shapes, 4 layers, bf16) and report tokens/s and MFU
# against both the datasheet peak and the dense bf16 GEMM rate measured in the same call.
# With HETMOE_E2E_PROFILE=1 it then traces steps 8..9 of a short run (run.profile_start) and
# keeps the summary (device kernels by time) and the trace in $OUT/profile.
#   Carry .gpu-deps and data/fortunes. Logs go to $OUT (or ./gpu-out).
set -uo pipefail
source benchmarks/gpu/common.sh
gpu_build hetmoe_cli hetmoe_op_bench
HETMOE_BENCH_DEVICE=cuda HETMOE_BENCH_DTYPE=bf16 build-gpu/benchmarks/hetmoe_op_bench \
  --benchmark_filter=DenseGemm --benchmark_min_time=0.5 2>&1 | grep DenseGemm
build-gpu/src/hetmoe train --config configs/ling-lite-4l.yaml --set run.out_dir=/tmp/ling-lite-4l \
  --overwrite "$@" 2>&1 | grep -v "^  \|^#\|^[a-z]*:$" | tee "$out/train_ling_lite_4l.log" | tail -12
nvidia-smi --query-gpu=memory.used --format=csv
if [ "${HETMOE_E2E_PROFILE:-0}" = 1 ]; then
  build-gpu/src/hetmoe train --config configs/ling-lite-4l.yaml --set run.out_dir=/tmp/ling-prof \
    --set train.steps=10 --set run.profile_start=8 --set run.profile_steps=2 --overwrite "$@" \
    >"$out/train_profiled.log" 2>&1
  mkdir -p "$out/profile" && cp /tmp/ling-prof/profile/* "$out/profile/"
  head -60 "$out/profile/summary-rank0.txt"
fi
