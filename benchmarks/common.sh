# Sourced by the benchmark scripts: the repository root as working directory, the environment,
# the build and output folders, and the fortunes corpus prepared once.
#   sets: build (HETMOE_BUILD_DIR, default build), out (OUT, default benchmarks/results)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/env.sh
build=${HETMOE_BUILD_DIR:-build}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
[ -f data/fortunes/index.json ] ||
  "$build/src/hetmoe" data prepare --input /usr/share/games/fortunes --out data/fortunes --separator %
