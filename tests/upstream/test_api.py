"""The API in process (pytest-aiohttp's client) on a real PostgreSQL: auth, campaigns, calls,
validation, health and readiness, metrics and the call-event WebSocket."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import asyncpg
import pytest

from tests.upstream.conftest import ADMIN, OPERATOR, SECRET
from upstream.api import make_app
from upstream.auth import issue_token
from upstream.backup.restore import RESTORE_LOCK_KEY
from upstream.db import libpq_url

pytestmark = pytest.mark.asyncio
PROBLEM = "application/problem+json"


async def problem(resp, status: int) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == PROBLEM
    body = await resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# --- health, readiness -----------------------------------------------------------------------


async def test_health_reports_version_python_and_environment(client):
    resp = await client.get("/health")
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "healthy" and body["environment"] == "test"
    assert set(body) == {"status", "version", "python", "environment"}


async def test_ready_when_the_database_answers_at_the_head_revision(client):
    resp = await client.get("/ready")
    assert resp.status == 200 and await resp.json() == {"status": "ready"}


async def test_not_ready_on_a_database_without_the_schema(aiohttp_client, settings, postgres):
    name = postgres.create_database()
    try:
        client = await aiohttp_client(make_app(settings, postgres.url(name)))
        resp = await client.get("/ready")
        assert resp.status == 503
        assert "schema revision none" in (await resp.json())["reason"]
    finally:
        await client.close()
        postgres.drop_database(name)


async def test_not_ready_when_the_database_does_not_answer(aiohttp_client, settings, postgres):
    client = await aiohttp_client(make_app(settings, postgres.url("no_such_database")))
    resp = await client.get("/ready")
    assert resp.status == 503
    assert "database unavailable" in (await resp.json())["reason"]
    assert (await client.get("/health")).status == 200  # the process itself is fine
    await problem(await client.get("/api/campaigns", headers=ADMIN), 503)


async def test_not_ready_while_a_restore_holds_its_lock(client, database_url):
    conn = await asyncpg.connect(libpq_url(database_url, "postgres"))
    try:
        assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", RESTORE_LOCK_KEY)
        resp = await client.get("/ready")
        assert resp.status == 503 and "restore" in (await resp.json())["reason"]
    finally:
        await conn.close()
    assert (await client.get("/ready")).status == 200


# --- authentication --------------------------------------------------------------------------


async def test_login_returns_a_bearer_token_that_opens_the_api(client):
    resp = await client.post("/api/auth/login",
                             json={"username": "admin", "password": "admin-password"})
    body = await resp.json()
    assert resp.status == 200 and body["token_type"] == "bearer" and body["expires_in"] > 0
    listed = await client.get("/api/campaigns",
                              headers={"Authorization": f"Bearer {body['access_token']}"})
    assert listed.status == 200


async def test_wrong_password_and_unknown_user_get_the_same_answer_in_similar_time(client):
    timings: dict[str, float] = {}
    bodies = {}
    for _ in range(3):  # the fastest of three: a busy machine only ever adds time
        for username in ("admin", "nobody-by-that-name"):
            started = time.perf_counter()
            resp = await client.post("/api/auth/login",
                                     json={"username": username, "password": "wrong-password"})
            elapsed = time.perf_counter() - started
            timings[username] = min(timings.get(username, elapsed), elapsed)
            bodies[username] = await problem(resp, 401)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert bodies["admin"] == bodies["nobody-by-that-name"]
    # Both pay one argon2 verification (tens of ms); without the dummy hash the unknown user
    # would answer in well under a millisecond.
    ratio = timings["nobody-by-that-name"] / timings["admin"]
    assert 0.3 < ratio < 3, timings


async def test_the_api_answers_other_requests_while_a_login_verifies_its_password(
        client, monkeypatch):
    """The argon2 verification runs off the event loop: held on purpose until /health has
    been answered, the login then completes. On the loop, it would block the loop (up to the
    5 s guard) and be done before /health could be read."""
    import upstream.auth

    real, entered, release = upstream.auth._hasher, threading.Event(), threading.Event()
    done: list[str] = []

    class HeldHasher:
        def verify(self, password_hash: str, password: str) -> bool:
            entered.set()
            release.wait(5)  # (a guard: never a hung test)
            try:
                return real.verify(password_hash, password)
            finally:
                done.append("verify")

    monkeypatch.setattr(upstream.auth, "_hasher", HeldHasher())
    login = asyncio.ensure_future(client.post(
        "/api/auth/login", json={"username": "admin", "password": "admin-password"}))
    async with asyncio.timeout(10):
        while not entered.is_set():
            await asyncio.sleep(0.01)
    health = await client.get("/health")
    done.append(f"health {health.status}")
    release.set()
    resp = await login
    assert done == ["health 200", "verify"]
    assert resp.status == 200 and (await resp.json())["token_type"] == "bearer"


async def test_a_password_is_compared_exactly_not_trimmed(client):
    resp = await client.post("/api/auth/login",
                             json={"username": "admin", "password": " admin-password "})
    await problem(resp, 401)


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic YWRtaW46eA=="},
    {"Authorization": "Bearer " + issue_token("another-secret-" + "x" * 32, "admin", "admin", 5)},
    {"Authorization": "Bearer " + issue_token(SECRET, "admin", "admin", -1)},
])
async def test_api_requires_a_valid_token(client, headers):
    await problem(await client.get("/api/campaigns", headers=headers), 401)


async def test_health_and_metrics_need_no_token(client):
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 200


# --- campaigns -------------------------------------------------------------------------------


async def test_campaign_crud(client):
    created = await client.post("/api/campaigns", json={"name": "Autumn"}, headers=ADMIN)
    campaign = await created.json()
    assert created.status == 201 and campaign["status"] == "draft"
    assert set(campaign) == {"id", "name", "status", "created_at", "updated_at"}
    assert created.headers["Location"] == f"/api/campaigns/{campaign['id']}"
    url = f"/api/campaigns/{campaign['id']}"
    patched = await (await client.patch(url, json={"status": "active", "name": "Autumn 2"},
                                        headers=OPERATOR)).json()
    assert patched["status"] == "active" and patched["name"] == "Autumn 2"
    assert patched["updated_at"] >= campaign["updated_at"]
    assert await (await client.get(url, headers=OPERATOR)).json() == patched
    assert (await client.delete(url, headers=ADMIN)).status == 204
    await problem(await client.get(url, headers=ADMIN), 404)


async def test_only_an_admin_deletes_a_campaign(client):
    await problem(await client.delete("/api/campaigns/1", headers=OPERATOR), 403)
    assert (await client.get("/api/campaigns/1", headers=OPERATOR)).status == 200


async def test_a_duplicate_campaign_name_is_a_conflict(client):
    await problem(await client.post("/api/campaigns", json={"name": "Renewals"},
                                    headers=ADMIN), 409)
    await problem(await client.patch("/api/campaigns/1", json={"name": "Renewals"},
                                     headers=ADMIN), 409)


async def test_invalid_fields_are_named_in_a_422(client):
    resp = await client.post("/api/campaigns", headers=ADMIN,
                             json={"name": "x" * 201, "status": "running", "owner": "me"})
    body = await problem(resp, 422)
    assert {e["field"] for e in body["errors"]} == {"name", "status", "owner"}
    body = await problem(await client.post("/api/campaigns", json={}, headers=ADMIN), 422)
    assert body["errors"] == [{"field": "name", "message": "is required"}]


@pytest.mark.parametrize("payload", [b"{", b"not json", b"\xff\xfe", b""])
async def test_malformed_json_is_a_400(client, payload):
    await problem(await client.post("/api/campaigns", data=payload, headers=ADMIN), 400)


@pytest.mark.parametrize("payload", [
    [], 3, "name", None, {"name": None}, {"name": 5}, {"name": ["a"]}, {"name": "   "},
    {"name": "ok", "status": None}, {"name": "ok", "status": ["draft"]},
])
async def test_bad_input_is_never_a_500(client, payload):
    resp = await client.post("/api/campaigns", data=json.dumps(payload), headers=ADMIN)
    await problem(resp, 422)


async def test_unknown_and_oversized_ids_are_404(client):
    for path in ("/api/campaigns/999999", "/api/campaigns/99999999999999999999999",
                 "/api/campaigns/abc"):
        await problem(await client.get(path, headers=ADMIN), 404)


BAD_BODIES = [b"{", b"[]", b"null", b'"x"', b"1e999", b'{"status": {}}', b'{"name": 1.5}',
              b'{"phone_number": null}', b'{"duration_s": true, "status": "completed"}',
              b'{"duration_s": -1, "status": "completed"}', b'{"username": []}',
              b'{"\\u0000": 1}', "{\"name\": \"\u00e9\u0000\"}".encode()]
WRITES = [("POST", "/api/auth/login"), ("POST", "/api/campaigns"),
          ("PATCH", "/api/campaigns/1"), ("POST", "/api/campaigns/1/calls"),
          ("PATCH", "/api/calls/1")]


async def test_no_malformed_or_invalid_body_gets_a_500_anywhere(client):
    for method, path in WRITES:
        for body in BAD_BODIES:
            resp = await client.request(method, path, data=body, headers=ADMIN)
            assert resp.status in (400, 409, 422), (method, path, body, await resp.text())
            assert resp.content_type == PROBLEM


# --- calls -----------------------------------------------------------------------------------


async def add_call(client, campaign_id: int = 1, phone: str = "+15550001111") -> dict:
    resp = await client.post(f"/api/campaigns/{campaign_id}/calls",
                             json={"phone_number": phone}, headers=OPERATOR)
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def test_a_call_goes_through_its_statuses(client):
    call = await add_call(client)
    assert call["status"] == "queued" and call["started_at"] is None
    url = f"/api/calls/{call['id']}"
    for status in ("ringing", "in_progress"):
        call = await (await client.patch(url, json={"status": status}, headers=OPERATOR)).json()
    assert call["started_at"] is not None
    done = await (await client.patch(url, json={"status": "completed", "duration_s": 42},
                                     headers=OPERATOR)).json()
    assert done["status"] == "completed" and done["duration_s"] == 42 and done["ended_at"]
    body = await problem(await client.patch(url, json={"status": "ringing"}, headers=OPERATOR),
                         409)
    assert "completed" in body["detail"]


async def test_a_call_status_must_be_known(client):
    body = await problem(await client.patch("/api/calls/1", json={"status": "lost"},
                                            headers=OPERATOR), 422)
    assert body["errors"][0]["field"] == "status"
    await problem(await client.patch("/api/calls/999999", json={"status": "ringing"},
                                     headers=OPERATOR), 404)


async def test_calls_are_refused_on_a_completed_campaign_or_a_bad_number(client):
    await client.patch("/api/campaigns/3", json={"status": "completed"}, headers=ADMIN)
    await problem(await client.post("/api/campaigns/3/calls", json={"phone_number": "+1555000"},
                                    headers=OPERATOR), 409)
    body = await problem(await client.post("/api/campaigns/1/calls",
                                           json={"phone_number": "call me"}, headers=OPERATOR),
                         422)
    assert body["errors"][0]["field"] == "phone_number"
    await problem(await client.post("/api/campaigns/999/calls",
                                    json={"phone_number": "+15550001"}, headers=OPERATOR), 404)


async def test_calls_page_with_a_keyset_cursor_and_filter(client):
    for i in range(5):
        await add_call(client, 2, f"+1555000{i:04d}")
    seen, cursor = [], None
    while True:
        query = {"campaign_id": "2", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/calls", params=query, headers=OPERATOR)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [c["id"] for c in seen]
    assert len(ids) == 7 and ids == sorted(ids) and {c["campaign_id"] for c in seen} == {2}
    queued = await (await client.get("/api/calls", params={"status": "queued"},
                                     headers=OPERATOR)).json()
    assert queued["items"] and {c["status"] for c in queued["items"]} == {"queued"}
    body = await problem(await client.get("/api/calls", params={"limit": "0", "status": "x"},
                                          headers=OPERATOR), 422)
    assert {e["field"] for e in body["errors"]} == {"limit", "status"}


# --- call events -----------------------------------------------------------------------------


async def test_events_written_by_one_replica_reach_subscribers_of_another(
        aiohttp_client, settings, seeded):
    replica_a = await aiohttp_client(make_app(settings, seeded))
    replica_b = await aiohttp_client(make_app(settings, seeded))
    token = ADMIN["Authorization"].split()[1]
    async with replica_b.ws_connect("/api/calls/events",
                                    protocols=("events", f"bearer.{token}")) as ws:
        assert ws.protocol == "events"
        call = await add_call(replica_a)
        event = await ws.receive_json(timeout=5)
        assert event == {"event": "call.created", "call": call}
        await replica_a.patch(f"/api/calls/{call['id']}", json={"status": "ringing"},
                              headers=OPERATOR)
        event = await ws.receive_json(timeout=5)
        assert event["event"] == "call.updated" and event["call"]["status"] == "ringing"


async def test_events_accept_an_access_token_query_parameter(client):
    token = OPERATOR["Authorization"].split()[1]
    async with client.ws_connect(f"/api/calls/events?access_token={token}") as ws:
        call = await add_call(client)
        assert (await ws.receive_json(timeout=5))["call"]["id"] == call["id"]


async def test_events_refuse_a_websocket_without_a_token(client):
    resp = await client.get("/api/calls/events", headers={
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    await problem(resp, 401)


async def test_a_rolled_back_write_sends_no_event(client, seeded):
    async with client.ws_connect("/api/calls/events", headers=ADMIN) as ws:
        conn = await asyncpg.connect(libpq_url(seeded))
        try:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("""SELECT pg_notify('call_events', '{"event": "rolled back"}')""")
            await tx.rollback()
        finally:
            await conn.close()
        call = await add_call(client)
        assert await ws.receive_json(timeout=5) == {"event": "call.created", "call": call}


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_count_requests_by_route_and_status_and_show_the_pool(client):
    await client.get("/api/campaigns/1", headers=ADMIN)
    await client.get("/api/campaigns/1")
    text = await (await client.get("/metrics")).text()
    assert ('upstream_http_requests_total{method="GET",route="/api/campaigns/{id}",'
            'status="200"} 1.0') in text
    assert ('upstream_http_requests_total{method="GET",route="/api/campaigns/{id}",'
            'status="401"} 1.0') in text
    assert "upstream_http_request_duration_seconds_bucket" in text
    assert "upstream_db_pool_size 10.0" in text and "upstream_db_pool_in_use" in text
    assert "upstream_backup_last_timestamp_seconds" not in text  # no backup yet


async def test_enable_metrics_false_removes_the_metrics_endpoint(aiohttp_client, settings,
                                                                 seeded):
    import dataclasses
    app = make_app(dataclasses.replace(settings, enable_metrics=False), seeded)
    quiet = await aiohttp_client(app)
    assert (await quiet.get("/metrics")).status == 404
    assert (await quiet.get("/health")).status == 200


async def test_metrics_read_the_latest_backup_from_the_backup_directory(client, settings):
    from upstream.backup.create import create_backup
    from upstream.backup.verify import verify_backup
    backup = await create_backup(settings.database_url, settings.backup_dir)
    text = await (await client.get("/metrics")).text()
    assert f"upstream_backup_last_size_bytes {float(backup.size)}" in text
    assert "upstream_backup_last_verified 0.0" in text
    await verify_backup(backup, settings.database_url)
    text = await (await client.get("/metrics")).text()
    assert "upstream_backup_last_verified 1.0" in text
    assert "upstream_backup_last_verified_timestamp_seconds 1.7" in text


# --- a restore under a running API -------------------------------------------------------------


async def test_the_api_serves_the_restored_database_after_a_restore(client, settings):
    from upstream.backup.create import create_backup
    from upstream.backup.restore import restore_backup
    url = settings.database_url
    backup = await create_backup(url, settings.backup_dir)
    created = await client.post("/api/campaigns", json={"name": "After the backup"},
                                headers=ADMIN)
    assert created.status == 201
    assert (await client.get("/api/campaigns/1", headers=ADMIN)).status == 200  # pooled

    await restore_backup(backup, url)  # terminates the API's connections to the old database

    assert (await client.get("/ready")).status == 200
    await problem(await client.get(f"/api/campaigns/{(await created.json())['id']}",
                                   headers=ADMIN), 404)  # the restored state: not there
    assert (await client.get("/api/campaigns/1", headers=ADMIN)).status == 200
