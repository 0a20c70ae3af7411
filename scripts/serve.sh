#!/usr/bin/env bash
# Run the embedded default: gateway (AE AXIOM, port 11112), pipeline and HTTP (port 8080)
# from one command, data under ./data. Installs into .venv on the first run (and when
# pyproject.toml changes); later starts need no network. Extra arguments go to `serve`
# (e.g. --http-port 8081); AXIOM_CONFIG and AXIOM_DATA_DIR choose config and data dir.
# With the `databases` extra: crosswalk maps read from PostgreSQL, MySQL/MariaDB, SQL
# Server and Cloud SQL.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS="${EXTRAS:-databases}" source "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/axiom-flow" serve --config "${AXIOM_CONFIG:-$ROOT/examples/local.yaml}" \
  --data-dir "${AXIOM_DATA_DIR:-$ROOT/data}" "$@"
