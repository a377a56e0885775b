#!/usr/bin/env bash
# The out-of-the-box run: install dependencies, build in Release, prepare the fortunes corpus,
# train configs/tiny.yaml on the CPU, then print the final validation loss and a text sample.
#   Extra arguments are passed to `hetmoe train` (e.g. --set train.steps=200).
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$(date +%s)
./scripts/install-deps.sh
source scripts/env.sh

build=${HETMOE_BUILD_DIR:-build}
# Only the executable is built; the tests and benchmarks stay configured for `cmake --build`.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$HETMOE_TORCH_CMAKE" \
  ${HETMOE_CMAKE_ARGS:-} >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
cmake --build "$build" --target hetmoe_cli -j "$(nproc)"
hetmoe="$build/src/hetmoe"
t1=$(date +%s)

if [ ! -f data/fortunes/index.json ]; then
  "$hetmoe" data prepare --input /usr/share/games/fortunes --out data/fortunes --separator %
fi
"$hetmoe" train --config configs/tiny.yaml --set backend.device=cpu --overwrite "$@"
t2=$(date +%s)

val=$(python3 -c 'import json,sys
rows=[json.loads(l) for l in open("runs/tiny/metrics.jsonl")]
print("%.4f" % [r["val_loss"] for r in rows if "val_loss" in r][-1])')
echo
echo "final validation loss: $val nats/byte"
echo "sample:"
"$hetmoe" generate --checkpoint runs/tiny --prompt "The " --tokens 300 --temperature 0.8 --seed 1
echo
echo "quickstart: setup+build $((t1 - t0)) s, data+training $((t2 - t1)) s, total $((t2 - t0)) s"
