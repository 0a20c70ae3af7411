#!/usr/bin/env bash
# Create .venv and install Axiom Flow into it, once. Sourced by serve.sh and test.sh.
# Usage: EXTRAS="test" source scripts/bootstrap.sh
#
# pip runs only when .venv is missing, pyproject.toml changed since the last install, or
# EXTRAS asks for an extra that was not installed; otherwise nothing touches the network,
# so a server without a package index restarts. The source is installed editable: code
# changes need no reinstall. To force one, delete .venv/.axiom-flow-installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$ROOT/.venv/bin/python" ]; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "axiom-flow needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1))" >&2
    exit 1
  fi
  "$PYTHON" -m venv "$ROOT/.venv"
fi

# The stamp holds the sha256 of the pyproject.toml last installed and the extras installed with it.
stamp="$ROOT/.venv/.axiom-flow-installed"
want_hash="$("$ROOT/.venv/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$ROOT/pyproject.toml")"
need_install=1
installed_extras="${EXTRAS:-}"
if [ -f "$stamp" ] && [ -x "$ROOT/.venv/bin/axiom-flow" ]; then
  have_hash="" have_extras=""
  read -r have_hash have_extras < "$stamp" || true
  if [ "$have_hash" = "$want_hash" ]; then
    need_install=0
    installed_extras="$have_extras${EXTRAS:+,$EXTRAS}"
    wanted="${EXTRAS:-}"
    for extra in ${wanted//,/ }; do
      case ",$have_extras," in *",$extra,"*) ;; *) need_install=1 ;; esac
    done
  fi
fi

if [ "$need_install" = 1 ]; then
  echo "installing Axiom Flow${EXTRAS:+ [$EXTRAS]} into $ROOT/.venv (again only when pyproject.toml changes)" >&2
  spec="$ROOT"
  [ -n "${EXTRAS:-}" ] && spec="$ROOT[$EXTRAS]"
  "$ROOT/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
  echo "$want_hash ${installed_extras#,}" > "$stamp"
fi
