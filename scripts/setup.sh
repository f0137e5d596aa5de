#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine: the system GL libraries for
# offscreen rendering and a virtual environment in .venv with the pinned packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Offscreen rendering goes through EGL with Mesa's software rasteriser (no GPU needed).
if ! ldconfig -p | grep -q "libEGL_mesa.so.0" || ! ldconfig -p | grep -q "libGL.so.1"; then
    packages="libegl1 libegl-mesa0 libgl1 libgles2 libgl1-mesa-dri"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages
    fi
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first, by exact version, so that no other package can pull a different (CUDA) build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
