#!/usr/bin/env bash
# Fetch, here (where the package registry is reachable), the wheels bench/gpu_check.sh needs on a GPU machine
# whose image has PyTorch, transformers and peft but not this project's schema, settings and registry
# dependencies: pydantic (+ pydantic-core, annotated-types, typing-inspection), pydantic-settings
# (+ python-dotenv) and redis. ~3.5 MB, for CPython 3.12 on x86-64 Linux (the lent GPU image's python3;
# PYTHON_VERSION overrides). They go to .whl/ (git-ignored); carry that folder to the GPU machine, where
# gpu_check.sh installs them into its work folder when a module is missing.
#
#   bash bench/gpu_wheels.sh     -> .whl/*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}"
# The versions this checkout's venv runs, so the GPU check imports what the tests here ran against.
mapfile -t PINS < <("$PY" - <<'PYCODE'
from importlib.metadata import version
for name in ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "pydantic-settings",
             "python-dotenv", "redis"):
    print(f"{name}=={version(name)}")
PYCODE
)
mkdir -p .whl
for pin in "${PINS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "${PYTHON_VERSION:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "$pin"
done
ls -1 .whl
