#!/usr/bin/env bash
# Set up, then run the demo upstream on :8000 and the gateway in front of it on :8080
# (admin on 127.0.0.1:9090). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m upstream serve --port 8000 &
upstream_pid=$!
trap 'kill "$upstream_pid" 2>/dev/null || true' EXIT
.venv/bin/gateway run --config "${GATEWAY_CONFIG:-policies/development.yaml}"
