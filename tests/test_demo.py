"""The shipped base policy in front of the demo upstream, as the README's first command runs it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_policy
from tests.support.client import request
from tests.support.processes import ROOT, free_port, run_shipped, stop, wait_for_port

SHIPPED = ROOT / "policies" / "gateway.yaml"


def test_shipped_policy_is_valid_without_warnings() -> None:
    loaded = load_policy(SHIPPED)
    assert loaded.warnings == ()
    assert [r.name for r in loaded.policy.routes] == [
        "health", "login", "call-events", "api", "everything-else"]


@pytest.fixture
def demo(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "upstream", "serve", "--port", str(port)],
                            cwd=ROOT)
    wait_for_port(port, proc)
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def test_demo_api_through_the_shipped_development_policy(tmp_path: Path, demo: str) -> None:
    gw = run_shipped("development.yaml", demo, tmp_path)
    try:
        campaigns = request(gw.port, "GET", "/api/campaigns")
        assert campaigns.status == 200 and campaigns.json()[0]["name"] == "Spring outreach"
        login = request(gw.port, "POST", "/api/auth/login",
                        body=json.dumps({"username": "op", "password": "pw"}).encode(),
                        headers={"Content-Type": "application/json"})
        assert login.status == 200 and login.json()["user"] == "op"

        async def first_event() -> dict:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{gw.url}/api/calls/events") as ws:
                    return (await ws.receive_json(timeout=5))

        assert asyncio.run(first_event())["event"] == "call.updated"
    finally:
        stop(gw.proc)
