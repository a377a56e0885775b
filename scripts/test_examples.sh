#!/usr/bin/env bash
# What an embedding project does, as a CI step: installs hetmoe from a build folder to a fresh
# prefix, then configures, builds and runs every project under docs/examples/ out of tree against
# that prefix with find_package(hetmoe). Each example asserts its own outcome (its loss falls).
# Only the hetmoe prefix is given: the package finds the LibTorch hetmoe was built with.
#   HETMOE_BUILD_DIR (default build-test, as scripts/test.sh leaves it)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
build=${HETMOE_BUILD_DIR:-build-test}
[ -f "$build/CMakeCache.txt" ] || { echo "test_examples.sh: no build in '$build'; run scripts/test.sh first" >&2; exit 1; }
# Fixed folders under the build (removed first) so that ccache sees the same paths every run.
work="$PWD/$build/examples"
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
echo "test_examples.sh: installed hetmoe to $work/prefix"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
shopt -s nullglob
examples=(docs/examples/*/)
[ ${#examples[@]} -gt 0 ] || { echo "test_examples.sh: no examples under docs/examples" >&2; exit 1; }
for example in "${examples[@]}"; do
  name=$(basename "$example")
  start=$(date +%s)
  cmake -S "$example" -B "$work/$name" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" >"$work/$name.configure.log" 2>&1 ||
    { cat "$work/$name.configure.log"; exit 1; }
  cmake --build "$work/$name"
  (cd "$work/$name" && ctest --output-on-failure --timeout 300)
  echo "test_examples.sh: $name built and passed in $(( $(date +%s) - start )) s"
done
