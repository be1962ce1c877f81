#!/usr/bin/env bash
# Set-up plus the test suite (CPU only, a few minutes on 2 cores). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check . && .venv/bin/ruff format --check . || { echo "test: ruff found problems (run .venv/bin/ruff format . && .venv/bin/ruff check --fix .)" >&2; exit 1; }
exec .venv/bin/python -m pytest -q "$@"
