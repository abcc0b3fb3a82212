"""The shipped policy in front of the demo application (upstream/, on a real PostgreSQL), as the
README's first command runs it: real processes end to end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from gateway.config import load_policy
from tests.support.app import app_env, run_app, serving
from tests.support.client import request
from tests.support.processes import ROOT, run_shipped, stop

SHIPPED = ROOT / "policies" / "gateway.yaml"
JSON = {"Content-Type": "application/json"}


def test_shipped_policy_is_valid_without_warnings() -> None:
    loaded = load_policy(SHIPPED)
    assert loaded.warnings == ()
    assert [r.name for r in loaded.policy.routes] == [
        "health", "login", "call-events", "api", "everything-else"]


@pytest.fixture
def demo(tmp_path: Path, database_url: str):
    seeded = run_app(["seed"], app_env(database_url))
    assert seeded.returncode == 0, seeded.stderr
    with serving(database_url, tmp_path / "upstream.log") as url:
        yield url


def login(port: int, password: str = "admin-password"):
    return request(port, "POST", "/api/auth/login", headers=JSON,
                   body=json.dumps({"username": "admin", "password": password}).encode())


def test_demo_api_through_the_shipped_development_policy(tmp_path: Path, demo: str) -> None:
    gw = run_shipped("development.yaml", demo, tmp_path)
    try:
        assert request(gw.port, "GET", "/api/campaigns").status == 401
        token = login(gw.port).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}", **JSON}

        listed = request(gw.port, "GET", "/api/campaigns", headers=auth)
        assert listed.status == 200
        assert listed.json()["items"][0]["name"] == "Spring outreach"
        created = request(gw.port, "POST", "/api/campaigns", headers=auth,
                          body=json.dumps({"name": "Through the gateway"}).encode())
        assert created.status == 201 and created.json()["status"] == "draft"
        cid = created.json()["id"]
        patched = request(gw.port, "PATCH", f"/api/campaigns/{cid}", headers=auth,
                          body=json.dumps({"status": "active"}).encode())
        assert patched.status == 200 and patched.json()["status"] == "active"
        assert request(gw.port, "GET", f"/api/campaigns/{cid}", headers=auth
                       ).json()["status"] == "active"

        async def call_event() -> dict:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{gw.url}/api/calls/events",
                                              protocols=("events", f"bearer.{token}")) as ws:
                    assert ws.protocol == "events"
                    added = await asyncio.to_thread(
                        request, gw.port, "POST", f"/api/campaigns/{cid}/calls", headers=auth,
                        body=json.dumps({"phone_number": "+15551234567"}).encode())
                    assert added.status == 201
                    return await ws.receive_json(timeout=10)

        event = asyncio.run(call_event())
        assert event["event"] == "call.created"
        assert event["call"]["campaign_id"] == cid
        assert event["call"]["phone_number"] == "+15551234567"

        assert request(gw.port, "DELETE", f"/api/campaigns/{cid}", headers=auth).status == 204
        assert request(gw.port, "GET", f"/api/campaigns/{cid}", headers=auth).status == 404

        preflight = request(gw.port, "OPTIONS", "/api/campaigns", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Authorization, Content-Type"})
        assert preflight.status == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

        # The login limit is 5 per 15 minutes per client: one above, four wrong passwords...
        for _ in range(4):
            assert login(gw.port, "wrong-password").status == 401
        sixth = login(gw.port)
        assert sixth.status == 429 and "Retry-After" in sixth.headers
    finally:
        stop(gw.proc)
