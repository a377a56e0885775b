#!/usr/bin/env bash
# CI's benchmark step (after the tests): a short `hetmoe bench` of configs/bench-small.yaml on the
# CPU, compared by scripts/compare_bench.py, which prints the side-by-side table, with the newest
# committed CPU result under benchmarks/results/*-cpu*/ measured on the same device (the CI
# machines come as more than one CPU), or the newest of any device when none is. It fails on errors only (a
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
# "<file>\t<why>": the newest result of this run's device, else the newest of all.
pick=$(/usr/bin/python3 - "$result" benchmarks/results/*-cpu*/bench-cpu.json <<'PY'
import json, os, sys
def device(path):
    try:
        return json.load(open(path))["runs"][0]["device"]
    except (OSError, ValueError, KeyError, IndexError):
        return None
mine, files = device(sys.argv[1]), sorted(f for f in sys.argv[2:] if os.path.isfile(f))
same = [f for f in files if device(f) == mine]
if same:
    print(f"{same[-1]}\tthe newest committed result of this device, {mine}")
elif files:
    print(f"{files[-1]}\tthe newest committed result; none is of this device, {mine}")
PY
)
baseline=${pick%%$'\t'*}
if [ -z "$baseline" ]; then
  echo "bench_ci.sh: no committed CPU result to compare with; this run's:"
  cat "$out/bench.log"
else
  echo "bench_ci.sh: this commit's CPU bench against $baseline (${pick#*$'\t'})"
  /usr/bin/python3 scripts/compare_bench.py "$baseline" "$result" --label committed --label this-run
fi
[ -n "$keep_out" ] || rm -rf "$out"
