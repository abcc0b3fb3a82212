"""Admin endpoints, graceful shutdown and worker processes, on real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request

import aiohttp
import psutil
import pytest

from gateway import __version__
from tests.support.client import request
from tests.support.processes import (
    free_port,
    stop,
    wait_until,
)


def admin_get(gw, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(gw.admin_url + path, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_reports_version_and_environment(gateway) -> None:
    assert admin_get(gateway, "/health") == (
        200, {"status": "healthy", "version": __version__, "environment": "test"})


def test_ready_when_upstream_reachable(gateway) -> None:
    assert admin_get(gateway, "/ready") == (200, {"status": "ready"})


def test_not_ready_when_upstream_unreachable(gateway_factory) -> None:
    gw = gateway_factory(f"http://127.0.0.1:{free_port()}")
    status, body = admin_get(gw, "/ready")
    assert status == 503 and body["status"] == "not ready" and "unreachable" in body["reason"]


def test_admin_endpoints_are_not_on_the_public_port(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, routes="  - name: api\n    match: {path_prefix: /api/}")
    assert request(gw.port, "GET", "/health").status == 404


def test_sigterm_fails_readiness_finishes_in_flight_and_exits_0(gateway) -> None:
    result: dict = {}

    def slow_request() -> None:
        result["reply"] = request(gateway.port, "GET", "/slow/1.5")

    worker = threading.Thread(target=slow_request)
    worker.start()
    # the request is in flight once the upstream has it; the gateway holds one upstream conn
    proc = psutil.Process(gateway.proc.pid)
    wait_until(lambda: any(c.status == "ESTABLISHED" and c.raddr and c.raddr.port != 0
                           and c.laddr.port != gateway.port for c in proc.net_connections()))
    gateway.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: _ready_status(gateway) in (503, None))
    assert _ready_status(gateway) in (503, None)  # failing, or admin already closed
    with pytest.raises(OSError):
        wait_until(lambda: _refused(gateway.port), timeout=3)
        raise ConnectionRefusedError
    worker.join(10)
    assert result["reply"].status == 200 and result["reply"].body == b"slow done"
    assert gateway.proc.wait(10) == 0


def _ready_status(gw) -> int | None:
    try:
        return admin_get(gw, "/ready")[0]
    except OSError:
        return None


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_websockets_get_1001_on_shutdown(gateway) -> None:
    async def scenario() -> int | None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{gateway.url}/ws") as ws:
                await ws.send_str("ping")
                assert (await ws.receive(5)).data == "ping"
                gateway.proc.send_signal(signal.SIGTERM)
                msg = await ws.receive(10)
                assert msg.type is aiohttp.WSMsgType.CLOSE
                return msg.data

    assert asyncio.run(scenario()) == 1001
    assert gateway.proc.wait(10) == 0


def test_workers_share_one_port_and_are_restarted(gateway_factory, upstream) -> None:
    gw = gateway_factory(upstream.url, args=("--workers", "2"))
    supervisor = psutil.Process(gw.proc.pid)
    wait_until(lambda: len(supervisor.children()) == 2)
    workers = {p.pid for p in supervisor.children()}
    for _ in range(20):
        assert request(gw.port, "GET", "/x").status == 200
    victim = next(iter(workers))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(supervisor.children()) == 2
               and victim not in {p.pid for p in supervisor.children()}, timeout=15)
    wait_until(lambda: _serves(gw.port))
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(20) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                   for pid in workers - {victim})


def _serves(port: int) -> bool:
    try:
        return request(port, "GET", "/x", timeout=2).status == 200
    except OSError:
        return False


def test_the_admin_listener_answers_its_endpoints_and_nothing_else(gateway) -> None:
    """On the gateway's own HTTP server: GET and HEAD of its four endpoints; anything else a
    problem+json 404 or 405 (with Allow); no Server header on any of them."""
    health = request(gateway.admin_port, "GET", "/health?probe=1")
    assert health.status == 200
    assert health.headers["Content-Type"] == "application/json; charset=utf-8"
    assert health.json()["version"] == __version__
    head = request(gateway.admin_port, "HEAD", "/ready")
    assert (head.status, head.body) == (200, b"")
    assert int(head.headers["Content-Length"]) == len(b'{"status": "ready"}')
    missing = request(gateway.admin_port, "GET", "/admin")
    assert missing.status == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    refused = request(gateway.admin_port, "POST", "/health", body=b"{}")
    assert refused.status == 405
    assert refused.headers["Allow"] == "GET, HEAD"
    assert refused.json()["status"] == 405
    for reply in (health, head, missing, refused):
        assert "Server" not in reply.headers
    # the connection layer's own refusals hold here too
    assert request(gateway.admin_port, "GET", "/" + "a" * 9000).status == 414


def test_stop_helper_leaves_no_process(gateway) -> None:
    assert stop(gateway.proc) == 0


def test_sighup_swaps_in_a_valid_policy_and_keeps_the_running_one_when_invalid(
    gateway_factory, upstream
) -> None:
    gw = gateway_factory(upstream.url)
    assert request(gw.port, "GET", "/x").status == 200
    original = gw.config.read_text()
    gw.config.write_text(original.replace("path_prefix: /", "path_prefix: /only/"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "policy reloaded" in gw.log_text())
    assert request(gw.port, "GET", "/x").status == 404
    assert request(gw.port, "GET", "/only/x").status == 200

    gw.config.write_text(original.replace("version: 1", "version: 1\nbogus: true"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "failed, keeping the running policy" in gw.log_text())
    assert "unknown key 'bogus'" in gw.log_text()
    assert request(gw.port, "GET", "/x").status == 404  # still the last valid policy
