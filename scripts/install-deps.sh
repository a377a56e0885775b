#!/usr/bin/env bash
# Installs everything hetmoe needs to build, test and train, and nothing else:
#   - Debian packages (compilers' helpers, oneDNN, OpenMPI, spdlog, CLI11, yaml-cpp, nlohmann-json,
#     GoogleTest, Google Benchmark, ccache, fortunes, matplotlib, clang for the fuzzers, hipcc for
#     the HIP compile check);
#   - LibTorch from PyPI's torch==2.11.0 in a virtual environment outside the checkout
#     (default ~/.cache/hetmoe/venv, HETMOE_VENV overrides).
# Idempotent: when everything is present it only checks and returns in a few seconds.
# Prints, as its last line, nothing; source scripts/env.sh afterwards for HETMOE_VENV / Torch_DIR.
set -euo pipefail

TORCH_VERSION=2.11.0
VENV=${HETMOE_VENV:-$HOME/.cache/hetmoe/venv}

debs=(
  build-essential cmake ninja-build pkg-config git ccache
  libdnnl-dev ocl-icd-opencl-dev opencl-headers libopenmpi-dev openmpi-bin
  libspdlog-dev libfmt-dev libcli11-dev libyaml-cpp-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  fortunes python3-venv python3-matplotlib clang
  hipcc libamdhip64-dev
)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=${HETMOE_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "install-deps: creating virtual environment $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$py" -m venv "$VENV"
fi
have=$("$VENV/bin/python" -c 'import torch;print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "install-deps: installing torch==$TORCH_VERSION into $VENV (this is a large download, once)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q "torch==$TORCH_VERSION"
fi
# Optional Python extras for reference tests; a failure here only skips those tests.
if ! "$VENV/bin/python" -c 'import transformers, safetensors' 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q transformers safetensors numpy >/dev/null 2>&1 ||
    echo "install-deps: transformers/safetensors not installed; the reference tests will skip"
fi
echo "install-deps: ok (torch $("$VENV/bin/python" -c 'import torch;print(torch.__version__)') in $VENV)"
