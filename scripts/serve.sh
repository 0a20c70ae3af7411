#!/usr/bin/env bash
# Install and run the embedded default: gateway (AE AXIOM, port 11112), pipeline and
# HTTP (port 8080) in one process, data under ./data. Extra arguments go to `serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/axiom-flow" serve --config "${AXIOM_CONFIG:-$ROOT/examples/local.yaml}" \
  --data-dir "${AXIOM_DATA_DIR:-$ROOT/data}" "$@"
