#!/usr/bin/env bash
# Sets up Ember in ./.venv: the pinned CPU torch first (never an unpinned torch, which
# would pull several GB of CUDA packages), then Ember with its test, plotting and docs extras (the
# tests build the documentation site), and the regression (scikit-learn: the diabetes data of
# `ember regression`) and graphviz (render_model) extras, so that every example is tested. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if ! .venv/bin/pip install -q "torch==2.13.0" 2>/dev/null; then
    echo "torch==2.13.0 is not available here; installing the CPU build of torch>=2.2 from the PyTorch index" >&2
    .venv/bin/pip install -q "torch>=2.2" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
.venv/bin/pip install -q -e ".[test,plots,docs,regression,graphviz]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import ember, torch; print('ember', ember.__version__, 'with torch', torch.__version__, 'ready in .venv')"
