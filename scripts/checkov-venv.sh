#!/usr/bin/env bash
# Create checkov's own virtualenv (tests/infra/test_terraform.py runs it from there), once.
set -euo pipefail
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/axiom-checkov"
if [ ! -x "$VENV/bin/checkov" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov>=3.2,<4"
fi
