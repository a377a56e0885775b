#!/usr/bin/env bash
# End-to-end training throughput on a lent GPU: build with CUDA (as run_on_gpu.sh), then train
# configs/ling-lite-4l.yaml (Ling-Lite layer shapes, 4 layers, bf16) and report tokens/s and MFU
# against both the datasheet peak and the dense bf16 GEMM rate measured in the same call.
#   Carry .gpu-deps and data/fortunes. Logs go to $OUT (or ./gpu-out).
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
source .gpu-deps/env.sh
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release $HETMOE_GPU_CMAKE_ARGS \
  -DHETMOE_WITH_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_dnnl=ON -DHETMOE_BUILD_TESTS=OFF \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
cmake --build build-gpu -j 16 --target hetmoe_cli hetmoe_op_bench >"$out/build.log" 2>&1 ||
  { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
HETMOE_BENCH_DEVICE=cuda HETMOE_BENCH_DTYPE=bf16 build-gpu/benchmarks/hetmoe_op_bench \
  --benchmark_filter=DenseGemm --benchmark_min_time=0.5 2>&1 | grep DenseGemm
build-gpu/src/hetmoe train --config configs/ling-lite-4l.yaml --set run.out_dir=/tmp/ling-lite-4l \
  --overwrite "$@" 2>&1 | grep -v "^  \|^#\|^[a-z]*:$" | tee "$out/train_ling_lite_4l.log" | tail -12
nvidia-smi --query-gpu=memory.used --format=csv
