#!/usr/bin/env bash
# Create .venv and install wsss with its dev tools. Torch is pinned to releases that exist as
# wheels on CPU-only machines too; pydensecrf2 (the maintained pydensecrf fork) builds from source.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[dev]"
