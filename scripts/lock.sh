#!/usr/bin/env bash
# `make lock`: refresh configs/lock.txt, the exact versions that `make setup` installs.
#
# Resolves the newest versions pyproject.toml allows in a clean virtual environment (torch as the Makefile
# installs it), then runs lint and the whole test suite there; only if both pass is the lock file
# replaced (atomically). On failure the old lock stays and the new candidate is left next to it for
# inspection. Commit the new lock together with whatever made its tests pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
LOCK=${LOCK:-configs/lock.txt}
ENV=${LOCK_VENV:-.venv-lock}
CANDIDATE="$LOCK.candidate"

echo "lock: fresh environment in $ENV (torch $TORCH_VERSION)"
rm -rf "$ENV"
"$PYTHON" -m venv "$ENV"
PY="$ENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
"$PY" -m pip install -q "torch==$TORCH_VERSION" $TORCH_PIP_ARGS
"$PY" -m pip install -q --no-build-isolation -e ".[train,dev]"

{
  echo "# voxmix lock file: the exact versions \`make setup\` installs (pip constraints, -c)."
  echo "# Written by \`make lock\` ($(date -u +%Y-%m-%d), Python $("$PY" -c 'import platform; print(platform.python_version())'), $(uname -m)) after"
  echo "# lint and the test suite passed with exactly these versions. torch is not here: the Makefile installs"
  echo "# TORCH_VERSION, as a CPU or CUDA build; on a CUDA build it also leaves triton to torch's own pin."
  # --all keeps pip, setuptools and wheel (they build csrc/); torch and voxmix itself are not locked.
  "$PY" -m pip freeze --all --exclude-editable | grep -viE '^(torch|voxmix)==' | LC_ALL=C sort -f
} > "$CANDIDATE"
echo "lock: candidate written to $CANDIDATE ($(grep -vc '^#' "$CANDIDATE") packages); testing it"

"$PY" scripts/versions.py --lock "$CANDIDATE" --strict
"$ENV/bin/ruff" check .
"$ENV/bin/ruff" format --check .
"$PY" -m pytest -q tests

mv "$CANDIDATE" "$LOCK"
echo "lock: $LOCK updated; review with: git diff $LOCK"
