"""gateway/redis/ is the gateway's Redis client and knows nothing else of the gateway: its
modules, imported in a fresh interpreter, bring in no gateway module outside the package but
gateway.loop_turns (no rate limits, settings, config, handler or proxy). The rate limiter uses
it through gateway/ratelimit/redis_backend.py, whose scripts are package data."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {"gateway", "gateway.loop_turns"}


@pytest.mark.integration  # a fresh interpreter per module
def test_the_redis_package_imports_nothing_of_the_gateway_but_loop_turns() -> None:
    names = sorted(f"gateway.redis.{p.stem}" for p in (ROOT / "gateway" / "redis").glob("*.py")
                   if p.stem != "__init__")
    assert "gateway.redis.client" in names
    code = ("import importlib, json, sys\n"
            f"for name in {names!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('gateway'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    loaded = set(json.loads(out))
    outside = {m for m in loaded - ALLOWED if not m.startswith("gateway.redis")}
    assert outside == set(), f"gateway/redis/ imports {sorted(outside)}"


def test_the_rate_limit_scripts_are_package_resources() -> None:
    from gateway.ratelimit import redis_backend

    assert "redis.call('TIME')" in redis_backend.LUA
    assert "ZADD" in redis_backend.HEARTBEAT
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]
    assert "*.lua" in package_data.get("gateway.ratelimit", []), "an installed gateway lacks them"
