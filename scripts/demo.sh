#!/usr/bin/env bash
# Set up, then run the demo application on :8000 and the gateway in front of it on :8080
# (admin on 127.0.0.1:9090):
#   1. the embedded PostgreSQL 16 under .data/ (skipped when DATABASE_URL is set),
#   2. its migrations, 3. the demo data (login admin / admin-password, development only),
#   4. the API, 5. the gateway on policies/development.yaml.
# Ctrl-C stops the API, the gateway and the embedded database.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export ENVIRONMENT="${ENVIRONMENT:-development}"
py=.venv/bin/python
if [ -z "${DATABASE_URL:-}" ]; then
  $py -m upstream db start
fi
$py -m upstream migrate upgrade
$py -m upstream seed
$py -m upstream serve --port 8000 &
upstream_pid=$!
cleanup() {
  kill "$upstream_pid" 2>/dev/null || true
  wait "$upstream_pid" 2>/dev/null || true
  if [ -z "${DATABASE_URL:-}" ]; then $py -m upstream db stop >/dev/null || true; fi
}
trap cleanup EXIT
.venv/bin/gateway run --config "${GATEWAY_CONFIG:-policies/development.yaml}"
