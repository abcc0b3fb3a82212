#!/usr/bin/env bash
# Set up everything the tests need, then lint and run the whole default suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check .
# pytest exits 5 when it collected nothing; that is a failure here, never hidden.
exec .venv/bin/python -m pytest "$@"
