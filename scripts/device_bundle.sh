#!/usr/bin/env bash
# Packs into .device/ (git-ignored) what a GPU machine without network needs to run
# bench/device_check.sh: wheels of the packages its image lacks (for its Python, 3.12 by
# default), robosuite's modelling code with only the asset files the pickplace scene loads,
# and the EGL loader libraries. About 40 MB; run after scripts/setup.sh, then carry .device.
#   bash scripts/device_bundle.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${1:-3.12}"
bundle=.device
rm -rf "$bundle" && mkdir -p "$bundle/wheels" "$bundle/site" "$bundle/gl"

# Pure-Python or manylinux wheels, pinned to what the project's setup installs here.
version() { .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
packages=()
for name in mujoco glfw PyOpenGL gymnasium farama-notifications hydra-core omegaconf hydra-joblib-launcher termcolor; do
    packages+=("$name==$(version "$name")")
done
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$python_version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$bundle/wheels" "${packages[@]}"
# hydra's parser runtime is published as a source archive only: built here (pure Python)
.venv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps -w "$bundle/wheels" \
    "antlr4-python3-runtime==$(version antlr4-python3-runtime)"

# robosuite: its Python code, data files and MJCF sources, and of its 500 MB of meshes and
# textures only those that the pickplace scene references (found by building it).
.venv/bin/python - "$bundle/site" <<'EOF'
import re
import shutil
import sys
from pathlib import Path

import robosuite


root = Path(robosuite.__file__).parent
assets = root / "models" / "assets"
target = Path(sys.argv[1]) / "robosuite"
for path in root.rglob("*"):
    # the models' MJCF sources (in assets/ too) are read while a scene is assembled
    if path.is_file() and (assets not in path.parents or path.suffix == ".xml") and "__pycache__" not in path.parts:
        destination = target / path.relative_to(root)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
from sim.pickplace import _scene_xml  # the scene the device checks run (lift and can are not packed)

used = {Path(match) for match in re.findall(r'file="([^"]+)"', _scene_xml())}
for path in used:
    path = path.resolve()
    if assets not in path.parents:
        raise SystemExit(f"an asset outside robosuite's assets: {path}")
    destination = target / path.relative_to(root)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, destination)
print(f"robosuite: {len(used)} asset files of its {sum(1 for p in assets.rglob('*') if p.is_file())}")
EOF

# EGL and OpenGL loaders (the NVIDIA driver brings its own EGL vendor library).
options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/device-bundle-apt-lists)
mkdir -p /tmp/device-bundle-apt-lists/partial
apt-get "${options[@]}" update -qq
(cd "$bundle/gl" && apt-get "${options[@]}" download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh "$bundle"
