#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz with clang (-fsanitize=fuzzer,address,undefined)
# and runs each for a bounded time from its seed corpus, then prints executions and crashes.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default 60 s; all four targets)
# Targets: config (YAML config + --set), dataset (index.json + tokens.bin), manifest (checkpoint
# state.json + health state), safetensors (the reader). Crashing inputs land in
# build-fuzz/artifacts/<target>/; the script exits 1 if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config dataset manifest safetensors)
out=${HETMOE_FUZZ_DIR:-build-fuzz}
cxx=${CXX_FUZZ:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (apt install clang)"; exit 1; }
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
flags="-std=c++17 -g -O1 $san -Iinclude -Isrc -I."
mkdir -p "$out/obj"

declare -A sources=(
  [config]="src/config/config.cpp src/config/config_schema.cpp"
  [dataset]="src/data/token_dataset.cpp src/data/prepare.cpp src/data/tokenizer.cpp src/core/fs.cpp"
  [manifest]="src/train/manifest.cpp src/train/health.cpp"
  [safetensors]="src/train/safetensors.cpp"
)
declare -A libs=([config]="-lyaml-cpp" [dataset]="" [manifest]="" [safetensors]="")

status=0
report=()
for t in "${targets[@]}"; do
  [ -n "${sources[$t]+x}" ] || { echo "fuzz.sh: unknown target '$t'"; exit 2; }
  objs=()
  for src in ${sources[$t]}; do
    obj="$out/obj/$(echo "$src" | tr / _).o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ]; then
      $cxx $flags -fsanitize=fuzzer-no-link -c "$src" -o "$obj"
    fi
    objs+=("$obj")
  done
  bin="$out/${t}_fuzz"
  $cxx $flags -fsanitize=fuzzer "tests/fuzz/${t}_fuzz.cpp" "${objs[@]}" ${libs[$t]} -o "$bin"
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  cp -n tests/fuzz/seeds/$t/* "$out/corpus/$t/" 2>/dev/null || true
  log="$out/$t.log"
  echo "== $t: fuzzing for ${seconds}s"
  set +e
  "$bin" "$out/corpus/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$t/" -max_len=65536 -rss_limit_mb=4096 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || echo 0)
  crashes=$(find "$out/artifacts/$t" -type f | wc -l)
  report+=("$(printf '%-12s %12s executions  %3s crashes  exit %s' "$t" "$execs" "$crashes" "$rc")")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    status=1
    grep -m5 -E "ERROR|SUMMARY|runtime error|deadly signal" "$log" || true
  fi
done
printf '%s\n' "${report[@]}"
exit $status
