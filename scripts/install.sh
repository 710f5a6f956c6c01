#!/usr/bin/env bash
# Create ./.venv (when absent) and install prvr with its test extras on the local CPU build of torch.
# The milvus extra (the embedded Milvus engine for tests/test_milvus_store.py) adds ~30 s to a fresh install.
# torch is pinned first: a bare "torch" requirement would make pip download gigabytes of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,bench,milvus]"
echo "prvr installed in $(pwd)/.venv"
