#!/usr/bin/env bash
# Make .venv with diffusely and its dependencies, on a fresh machine or an old one. Sourced by demo.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch only where it is missing, pinned to the CPU build this machine keeps on disk: an unpinned
# torch would pull a several-GB CUDA build. Users on GPUs install their own torch first.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  echo "installing torch 2.13.0 ..."
  .venv/bin/pip install --quiet "torch==2.13.0"
fi
stamp=.venv/.diffusely-installed
want=$(sha1sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c "import diffusely" 2>/dev/null; then
  echo "installing diffusely and its dependencies ..."
  .venv/bin/pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import diffusely"
  echo "$want" > "$stamp"
fi
