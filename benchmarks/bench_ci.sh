#!/usr/bin/env bash
# CI's benchmark step (after the tests): a short `hetmoe bench` of configs/bench-small.yaml on the
# CPU, compared with the newest committed CPU result under benchmarks/results/ by
# scripts/compare_bench.py, which prints the side-by-side table. It fails on errors only (a
# broken bench, an unreadable document), never on timing noise: CI machines are shared. For a
# regression gate on a stable machine, pass `--baseline FILE --fail-above 5%` to compare_bench.py.
#   HETMOE_BUILD_DIR (default build-test)   OUT (default: a temporary folder)
set -euo pipefail
export HETMOE_BUILD_DIR=${HETMOE_BUILD_DIR:-build-test}
keep_out=${OUT:-}
export OUT=${OUT:-$(mktemp -d)}
source "$(dirname "$0")/common.sh"

result="$out/bench-cpu.json"
"$build/src/hetmoe" bench --config configs/bench-small.yaml --backends cpu \
  --repeats 5 --train-warmup 2 --train-steps 5 --out "$result" --overwrite >"$out/bench.log"
baseline=$(ls -1d benchmarks/results/*-cpu/bench-cpu.json 2>/dev/null | sort | tail -n 1)
if [ -z "$baseline" ]; then
  echo "bench_ci.sh: no committed CPU result to compare with; this run's:"
  cat "$out/bench.log"
else
  echo "bench_ci.sh: this commit's CPU bench against $baseline"
  /usr/bin/python3 scripts/compare_bench.py "$baseline" "$result" --label committed --label this-run
fi
[ -n "$keep_out" ] || rm -rf "$out"
