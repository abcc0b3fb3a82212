#!/usr/bin/env bash
# Set up everything the tests need, then lint and run the whole default suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k proxy).
#
# --full (first argument): the full reliability suite as well (GATEWAY_TEST_SCALE=full,
# tests/support/scale.py): thousands of hostile connections, the 100,000-request smuggling
# fuzzer, the 2- and 30-minute soaks; about an hour on 2 cores. Tests may then run up to an
# hour each. Only the reliability suite: scripts/test.sh --full tests/reliability
set -euo pipefail
cd "$(dirname "$0")/.."
full=()
if [[ "${1:-}" == "--full" ]]; then
    shift
    export GATEWAY_TEST_SCALE=full
    full=(--timeout 3600)
fi
# The suite starts about a thousand Python processes (gateways, upstreams, CLIs): with
# PYTHONDONTWRITEBYTECODE set (some CI images set it), none caches its bytecode and each one
# compiles every module it imports again, which made the whole run ~40% slower here.
unset PYTHONDONTWRITEBYTECODE
bash scripts/setup.sh --test
.venv/bin/ruff check .
# pytest exits 5 when it collected nothing; that is a failure here, never hidden.
exec .venv/bin/python -m pytest "${full[@]}" "$@"
