#!/usr/bin/env bash
# Prepares a Debian/Ubuntu machine to build dla. Idempotent: installs only what is missing and says
# what it did. System packages come from apt; a CPU LibTorch comes from pip into .venv/ inside the
# repository, only when no LibTorch can be found (Torch_DIR, CMAKE_PREFIX_PATH or a pip-installed torch).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  say "error: installing system packages needs root or password-less sudo; run this script as root" >&2
  exit 1
fi

# Debian package -> a command on the PATH or a file whose presence shows that what we need is there
# (whoever installed it: apt, a toolchain module, a pyenv Python).
declare -A probes=(
  [g++]=g++
  [cmake]=cmake
  [ninja-build]=ninja
  [git]=git
  [python3]=python3
  [libyaml-cpp-dev]=/usr/include/yaml-cpp/yaml.h
  [libspdlog-dev]=/usr/include/spdlog/spdlog.h
  [libfmt-dev]=/usr/include/fmt/format.h
  [catch2]=/usr/include/catch2
  [libcli11-dev]=/usr/include/CLI/CLI.hpp
  [nlohmann-json3-dev]=/usr/include/nlohmann/json.hpp
  [libsentencepiece-dev]=/usr/include/sentencepiece_processor.h
  [libzstd-dev]=/usr/include/zstd.h
  [libgloo-dev]=/usr/include/gloo/context.h
  [clang-format]=clang-format
)
missing=()
for pkg in "${!probes[@]}"; do
  probe=${probes[$pkg]}
  if [[ $probe == /* ]]; then
    [ -e "$probe" ] || missing+=("$pkg")
  else
    command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing with apt: ${missing[*]}"
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "system packages: all present"
fi

torch_prefix() {
  local py
  for py in "$repo/.venv/bin/python" python3; do
    if command -v "$py" >/dev/null 2>&1; then
      "$py" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null && return 0
    fi
  done
  return 1
}

if [ -n "${Torch_DIR:-}" ]; then
  say "LibTorch: using Torch_DIR=$Torch_DIR"
elif [ -n "${CMAKE_PREFIX_PATH:-}" ] && compgen -G "${CMAKE_PREFIX_PATH//:/ }/Torch/TorchConfig.cmake" >/dev/null 2>&1; then
  say "LibTorch: found through CMAKE_PREFIX_PATH"
elif prefix=$(torch_prefix); then
  say "LibTorch: found a pip-installed torch at $prefix"
else
  # The CPU wheel of torch carries a complete LibTorch (headers, libraries, CMake package).
  say "LibTorch: none found; installing a CPU torch into $repo/.venv"
  if ! python3 -m venv "$repo/.venv" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq python3-venv
    python3 -m venv "$repo/.venv"
  fi
  # DLA_TORCH_INDEX=https://download.pytorch.org/whl/cpu avoids PyPI's larger CUDA wheel where PyPI
  # would serve one.
  index_args=()
  [ -n "${DLA_TORCH_INDEX:-}" ] && index_args=(--index-url "$DLA_TORCH_INDEX" --extra-index-url https://pypi.org/simple)
  "$repo/.venv/bin/pip" install -q --disable-pip-version-check "${index_args[@]}" "torch==${DLA_TORCH_VERSION:-2.13.0}"
  say "LibTorch: installed at $(torch_prefix)"
fi
say "done"
