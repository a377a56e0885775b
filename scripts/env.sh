# Sourced by the scripts: where the LibTorch venv is and how CMake finds it, plus ccache settings.
HETMOE_VENV=${HETMOE_VENV:-$HOME/.cache/hetmoe/venv}
export HETMOE_VENV
HETMOE_TORCH_CMAKE=$("$HETMOE_VENV/bin/python" -c 'import torch;print(torch.utils.cmake_prefix_path)')
export HETMOE_TORCH_CMAKE
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/hetmoe/ccache}
export CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
