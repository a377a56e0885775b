#!/usr/bin/env bash
# Everything a lent GPU session should run, in one device call that fits the workplace's lease
# (15 minutes of device time a session, the machine's start included; 10 minutes a command).
# It builds once and then runs stages in the order of what only a GPU can show, each given the
# time left and skipped, with a note, when less is left than it needs:
#   gpu-tests   the GPU test cases (CUDA against the CPU backend) and the NCCL communicator on
#               the one rank a one-GPU machine has                              (issues 5 and 4)
#   op-bench    the MoE layer and data movement at the Ling-Lite shape, bf16, with the dense GEMM
#               and copy ceilings measured in the same run                      (issue 5)
#   check       `hetmoe check` CPU against CUDA, fp32, 200 steps of bench-small (issue 7)
#   e2e         configs/ling-lite-4l.yaml end to end: tokens/s and MFU          (issue 5)
#   suite       the rest of the test suite on the GPU build
#   bench       `hetmoe bench` on cpu and cuda, compared with the committed CPU result
# The device tool brings back at most 8 files: everything goes into $OUT/logs.tar.gz, and
# $OUT/summary.txt (also printed last) has one line a stage.
#   HETMOE_GPU_BUDGET_S   seconds the whole script may take (default 540: a timeout_s of 600
#                         leaves a minute for packing and the transfer)
#   HETMOE_GPU_STAGES     the stages to run, in order (default: all of the above)
# Carry .gpu-deps (../shared/scripts/gpu-deps.sh) and data/fortunes.
set -uo pipefail
budget=${HETMOE_GPU_BUDGET_S:-540}
stages=${HETMOE_GPU_STAGES:-gpu-tests op-bench check e2e suite bench}
out=${OUT:-gpu-out}
logs="$out/logs"
mkdir -p "$logs"
summary="$out/summary.txt"
: >"$summary"
start=$(date +%s)
elapsed() { echo $(( $(date +%s) - start )); }
note() { echo "$*" | tee -a "$summary"; }
pack() {
  tar -czf "$out/logs.tar.gz" -C "$out" logs && rm -rf "$logs"
  echo "---- summary ($(elapsed) s) ----"
  cat "$summary"
}
trap pack EXIT

# run_stage NAME NEED_S FUNCTION: runs the (exported) shell function with the time left, less a
# reserve for packing, when at least NEED_S seconds are left; its output goes to logs/NAME.log.
run_stage() {
  local name=$1 need=$2 fn=$3 left rc t0
  left=$(( budget - $(elapsed) - 20 ))
  if [ "$left" -lt "$need" ]; then
    note "$name: skipped, ${left} s left of the budget, needs ${need} s"
    return 0
  fi
  t0=$(date +%s)
  timeout --kill-after=10 "$left" bash -c "$fn" >"$logs/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    note "$name: stopped at the budget after ${took} s (see logs/$name.log)"
  else
    note "$name: exit $rc in ${took} s"
  fi
  return 0
}

source .gpu-deps/env.sh >"$logs/deps.log" 2>&1 || { note "deps: .gpu-deps/env.sh failed"; exit 1; }
export PATH=/opt/hetmoe-deps/usr/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  >"$logs/gpu.txt" 2>&1
note "device: $(tail -n 1 "$logs/gpu.txt")"

t0=$(date +%s)
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release $HETMOE_GPU_CMAKE_ARGS \
  -DHETMOE_WITH_CUDA=ON -DCMAKE_DISABLE_FIND_PACKAGE_dnnl=ON -DHETMOE_PYTHON=python3 \
  >"$logs/configure.log" 2>&1 || { note "configure failed:"; tail -30 "$logs/configure.log"; exit 1; }
if ! timeout $(( budget - 60 )) cmake --build build-gpu -j "$(nproc)" >"$logs/build.log" 2>&1; then
  note "build failed or ran out of time after $(( $(date +%s) - t0 )) s:"
  grep -E "error|FAILED" "$logs/build.log" | head -20 | tee -a "$summary"
  exit 1
fi
note "build: $(( $(date +%s) - t0 )) s"
hetmoe=build-gpu/src/hetmoe
$hetmoe devices >"$logs/devices.txt" 2>&1

gpu_tests() {
  (cd build-gpu && ctest -j 4 --output-on-failure --timeout 300 -R 'Gpu|gpu|Cuda|cuda|nccl')
}
suite() {
  (cd build-gpu && ctest -j 8 --output-on-failure --timeout 300 -E 'Gpu|gpu|Cuda|cuda|nccl')
}
op_bench() {
  local dtype rc=0
  for dtype in bf16 fp32; do
    HETMOE_BENCH_DEVICE=cuda HETMOE_BENCH_DTYPE=$dtype build-gpu/benchmarks/hetmoe_op_bench \
      --benchmark_filter='DenseGemm|Copy|16384' --benchmark_min_time=0.3 \
      --benchmark_out="$logs/op_bench_cuda_$dtype.json" --benchmark_out_format=json || rc=1
    python3 benchmarks/gpu/summarize.py "$logs/op_bench_cuda_$dtype.json" \
      --out "$logs/summary_$dtype.json" || rc=1
  done
  return $rc
}
check() {
  $hetmoe check --config configs/bench-small.yaml --backends cpu,cuda --steps 200 --loss-window 10
}
e2e() {
  HETMOE_BENCH_DEVICE=cuda HETMOE_BENCH_DTYPE=bf16 build-gpu/benchmarks/hetmoe_op_bench \
    --benchmark_filter=DenseGemm --benchmark_min_time=0.5
  $hetmoe train --config configs/ling-lite-4l.yaml --set run.out_dir=/tmp/ling-lite-4l --overwrite
  local rc=$?
  nvidia-smi --query-gpu=memory.used --format=csv
  return $rc
}
bench() {
  $hetmoe bench --config configs/bench-small.yaml --backends cpu,cuda \
    --out "$logs/bench-cpu-cuda.json" --overwrite || return 1
  local baseline
  baseline=$(ls -1d benchmarks/results/*-cpu/bench-cpu.json | sort | tail -n 1)
  python3 scripts/compare_bench.py "$baseline" "$logs/bench-cpu-cuda.json"
}

export hetmoe logs
export -f gpu_tests suite op_bench check e2e bench

# What each stage needs at the least, in seconds, on an H100 with 16 cores (estimates).
for s in $stages; do
  case $s in
    gpu-tests) run_stage gpu-tests 60 gpu_tests
               grep -E "tests passed|tests failed" "$logs/gpu-tests.log" | tee -a "$summary" ;;
    op-bench)  run_stage op-bench 90 op_bench
               grep -E "^ceilings|tokens +16384" "$logs/op-bench.log" | tee -a "$summary" ;;
    check)     run_stage check 90 check
               grep -E "^largest|agree" "$logs/check.log" | tee -a "$summary" ;;
    e2e)       run_stage e2e 150 e2e
               grep -E "^BM_DenseGemm|done:" "$logs/e2e.log" | tail -3 | tee -a "$summary" ;;
    suite)     run_stage suite 90 suite
               grep -E "tests passed|tests failed" "$logs/suite.log" | tee -a "$summary" ;;
    bench)     run_stage bench 90 bench ;;
    *)         note "$s: no such stage (gpu-tests op-bench check e2e suite bench)" ;;
  esac
done
