#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/gpu.md): build hetmoe with the CUDA backend against that
# machine's python3 torch, run the whole test suite (GPU tests included), the operator benchmark
# on the GPU (summarised against the ceilings it measures), and tiny training runs on CUDA in fp32
# and bf16 (HETMOE_GPU_SKIP_TRAIN=1 skips them). Logs and JSON go to $OUT (or ./gpu-out).
#   Carry .gpu-deps (../shared/scripts/gpu-deps.sh) and data/fortunes.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
source .gpu-deps/env.sh
export PATH=/opt/hetmoe-deps/usr/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release $HETMOE_GPU_CMAKE_ARGS \
  -DHETMOE_WITH_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_dnnl=ON -DHETMOE_PYTHON=python3 \
  >"$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
grep "hetmoe backends" "$out/configure.log"
cmake --build build-gpu -j 16 >"$out/build.log" 2>&1 || { grep -E "error|FAILED" "$out/build.log" | head -40; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
build-gpu/src/hetmoe devices | tee "$out/devices.txt"
(cd build-gpu && ctest -j 8 --output-on-failure --timeout 600) >"$out/ctest.log" 2>&1
grep -E "tests passed|Failed|Skipped|\*\*\*" "$out/ctest.log" | tail -15
for dtype in bf16 fp32; do
  HETMOE_BENCH_DEVICE=cuda HETMOE_BENCH_DTYPE=$dtype build-gpu/benchmarks/hetmoe_op_bench \
    --benchmark_out="$out/op_bench_cuda_$dtype.json" --benchmark_out_format=json \
    --benchmark_min_time=0.3 >"$out/op_bench_cuda_$dtype.txt" 2>&1
  python3 benchmarks/gpu/summarize.py "$out/op_bench_cuda_$dtype.json" \
    --out "$out/summary_$dtype.json" | grep -E "ceilings|16384"
done
[ "${HETMOE_GPU_SKIP_TRAIN:-0}" = 1 ] && exit 0
for dtype in fp32 bf16; do
  build-gpu/src/hetmoe train --config configs/tiny.yaml --set backend.device=cuda \
    --set backend.dtype=$dtype --set run.out_dir=/tmp/run-cuda-$dtype --overwrite \
    --set train.log_every=250 >"$out/train_cuda_$dtype.log" 2>&1
  grep -E "val loss|done" "$out/train_cuda_$dtype.log" | tail -2
done
