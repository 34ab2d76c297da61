#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with torch and torchopt_zoo[dev].
# torch: where no NVIDIA GPU is visible, the CPU build pinned by TORCH_CPU_SPEC (a wheel that lies on
# this workplace's disk); with a GPU, any torch>=2.3 pip picks (a CUDA build). An installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch>=2.3"
  else
    "$PY" -m pip install -q "${TORCH_CPU_SPEC:-torch==2.13.0}"
  fi
fi
"$PY" -m pip install -q -e ".[dev]"
"$PY" -c "import torch, torchopt_zoo; print('torch', torch.__version__, '| torchopt_zoo', torchopt_zoo.__version__)"
