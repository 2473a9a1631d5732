#!/usr/bin/env bash
# Install torch without ever pulling a multi-GB CUDA build onto a CPU machine.
#  1. a GPU is present (nvidia-smi answers): the default PyPI build, which carries CUDA;
#  2. a CPU wheel is available locally (pip's find-links): take it without touching an index;
#  3. otherwise: PyTorch's CPU-only index.
set -euo pipefail
py=${1:-python}
version=${TORCH_VERSION:-2.13.0}
if "$py" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$version' else 1)" 2>/dev/null; then
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  exec "$py" -m pip install -q "torch==$version"
fi
# The wheel alone first (no index, no deps: a local CPU wheel or nothing), then its
# dependencies from the normal index, with torch already satisfied.
if "$py" -m pip install -q --no-index --no-deps "torch==$version" 2>/dev/null; then
  exec "$py" -m pip install -q "torch==$version"
fi
exec "$py" -m pip install -q "torch==$version" --index-url https://download.pytorch.org/whl/cpu
