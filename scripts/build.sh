#!/usr/bin/env bash
# Configures and builds dla into build/ (or $DLA_BUILD_DIR): Release, Ninja when present, all cores.
# Extra arguments go to CMake's configure step (e.g. -DDLA_CUDA_ARCHITECTURES=90 or -DTorch_DIR=...).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${DLA_BUILD_DIR:-$repo/build}
generator=()
if command -v ninja >/dev/null 2>&1 && [ ! -f "$build/CMakeCache.txt" ]; then generator=(-G Ninja); fi
cmake -S "$repo" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE="${DLA_BUILD_TYPE:-Release}" "$@"
cmake --build "$build" -j "${DLA_BUILD_JOBS:-$(nproc)}"
echo "[build] built $build/dla and $build/dla_tests"
