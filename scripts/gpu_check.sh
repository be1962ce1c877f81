#!/usr/bin/env bash
# Every GPU path in one command (issue 12): set up (scripts/setup.sh), then scripts/gpu_check.py runs each path
# on small generated data and prints one table (path | what was checked | figure | result | seconds).
# Exit 0 when no path failed, 1 when one did, 2 on bad arguments. Goal: under 8 minutes on one GPU, install included.
#
#   scripts/gpu_check.sh                      on a Linux x86_64 machine with an NVIDIA GPU, from a fresh clone
#   scripts/gpu_check.sh --dry-run            anywhere: the plumbing is checked, every GPU path reported SKIP
#   scripts/gpu_check.sh --no-setup ...       skip scripts/setup.sh (also GPU_CHECK_SKIP_SETUP=1) and run with
#                                             $PYTHON, else .venv/bin/python, else python3, as they are
#   scripts/gpu_check.sh --only faiss ray     some checks (and the ones they need); --json FILE, --workdir DIR
#
# Runs from any directory; needs no network beyond the package index (setup.sh's pip install).
set -euo pipefail
START="$(date +%s)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

skip_setup="${GPU_CHECK_SKIP_SETUP:-0}"
args=()
for a in "$@"; do
  case "$a" in
    --no-setup) skip_setup=1 ;;
    -h | --help) skip_setup=1; args+=("$a") ;;
    *) args+=("$a") ;;
  esac
done

if [[ "$skip_setup" == 1 ]]; then
  PY="${PYTHON:-}"
  if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
  fi
else
  scripts/setup.sh || { echo "gpu_check: scripts/setup.sh failed (see above): no check ran" >&2; exit 1; }
  PY="$ROOT/.venv/bin/python"
fi
exec "$PY" scripts/gpu_check.py --started-at "$START" ${args[@]+"${args[@]}"}
