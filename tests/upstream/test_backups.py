"""Backups on a real PostgreSQL: round trips row by row, consistency under writers, refusal of
damaged backups, a restore killed part-way, prune, and S3 (moto's server)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import psutil
import pytest

from tests.support.app import app_env
from tests.support.processes import ROOT
from tests.upstream.conftest import settings_env
from tests.upstream.dbrows import CHANGES, all_rows, databases_like, execute
from upstream.backup import EXIT_REFUSED, BackupError
from upstream.backup.catalog import list_local, resolve
from upstream.backup.create import create_backup
from upstream.backup.prune import plan
from upstream.backup.restore import RESTORE_LOCK_KEY, restore_backup
from upstream.backup.verify import verify_backup
from upstream.db import database_name, libpq_url


@pytest.fixture
def live(seeded_database_url: str) -> str:
    """The live database (its fixture also drops what restores keep beside it)."""
    return seeded_database_url


@pytest.mark.parametrize("fmt", ["custom", "plain"])
def test_round_trip_restores_every_row_of_every_table(live, tmp_path, fmt):
    before = asyncio.run(all_rows(live))
    backup = asyncio.run(create_backup(live, tmp_path, fmt))
    assert backup.manifest["row_counts"]["public.calls"] == len(before["calls"])
    asyncio.run(execute(live, *CHANGES))
    changed = asyncio.run(all_rows(live))
    assert changed != before

    result = asyncio.run(restore_backup(backup, live))

    assert asyncio.run(all_rows(live)) == before
    kept = libpq_url(live, result["previous"])
    assert asyncio.run(all_rows(kept)) == changed  # the previous database, as it was


def test_a_backup_taken_while_writers_run_restores_to_a_consistent_state(live, tmp_path):
    """Each writer transaction adds a campaign and three calls; a consistent backup never holds
    a campaign with fewer, and its manifest counts are exactly what restores."""

    async def scenario():
        stop = asyncio.Event()

        async def writer(n: int) -> int:
            conn = await asyncpg.connect(libpq_url(live))
            done = 0
            try:
                while not stop.is_set():
                    async with conn.transaction():
                        cid = await conn.fetchval(
                            "INSERT INTO campaigns (name) VALUES ($1) RETURNING id",
                            f"w{n}-{done}")
                        for i in range(3):
                            await conn.execute("INSERT INTO calls (campaign_id, phone_number)"
                                               " VALUES ($1, $2)", cid, f"+1555{i:07d}")
                    done += 1
            finally:
                await conn.close()
            return done

        writers = [asyncio.create_task(writer(n)) for n in range(3)]
        await asyncio.sleep(0.2)  # let the writers get going
        backup = await create_backup(live, tmp_path)
        await asyncio.sleep(0.1)
        stop.set()
        written = sum(await asyncio.gather(*writers))
        return backup, written

    backup, written = asyncio.run(scenario())
    assert written > 0
    asyncio.run(verify_backup(backup, live))  # restored row counts == manifest's
    asyncio.run(restore_backup(backup, live))
    rows = asyncio.run(all_rows(live))
    per_campaign: dict[int, int] = {}
    for call in rows["calls"]:
        per_campaign[call[1]] = per_campaign.get(call[1], 0) + 1
    written_campaigns = [c for c in rows["campaigns"] if c[1].startswith("w")]
    assert written_campaigns, "the backup should hold some of the writers' work"
    assert all(per_campaign.get(c[0]) == 3 for c in written_campaigns)
    assert len(rows["calls"]) == backup.manifest["row_counts"]["public.calls"]


# --- damaged backups -------------------------------------------------------------------------


def flip_a_byte(backup) -> None:
    data = bytearray(backup.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    backup.path.write_bytes(bytes(data))


def truncate(backup) -> None:
    with backup.path.open("r+b") as f:
        f.truncate(backup.size // 2)


def truncate_then_checksum(backup) -> None:
    """Truncated before its checksum and manifest were made: only reading it can tell."""
    truncate(backup)
    from upstream.backup.catalog import sha256_file
    digest = sha256_file(backup.path)
    backup.checksum_path.write_text(f"{digest}  {backup.path.name}\n")
    manifest = dict(backup.manifest, sha256=digest, size=backup.path.stat().st_size)
    backup.manifest_path.write_text(json.dumps(manifest))


def mismatch_manifest(backup) -> None:
    manifest = dict(backup.manifest)
    manifest["row_counts"] = dict(manifest["row_counts"], **{"public.calls": 999})
    backup.manifest_path.write_text(json.dumps(manifest))


DAMAGE = {
    "flipped-byte": (flip_a_byte, "checksum mismatch"),
    "truncated": (truncate, "truncated"),
    "truncated-before-checksum": (truncate_then_checksum, "cannot be read"),
    "manifest-mismatch": (mismatch_manifest, "row counts differ from the manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_backup_is_refused_by_verify_and_restore(live, tmp_path, damage):
    damage_fn, message = DAMAGE[damage]
    damage_fn(asyncio.run(create_backup(live, tmp_path)))
    backup = resolve(tmp_path, "latest")  # re-read: the manifest may have changed
    asyncio.run(execute(live, *CHANGES))
    before = asyncio.run(all_rows(live))

    for action in (verify_backup, restore_backup):
        with pytest.raises(BackupError) as refused:
            asyncio.run(action(backup, live))
        assert refused.value.exit_code == EXIT_REFUSED
        assert message in str(refused.value) and backup.name in str(refused.value)

    assert asyncio.run(all_rows(live)) == before
    assert asyncio.run(databases_like(live, database_name(live) + "_")) == set()
    assert not resolve(tmp_path, "latest").verified


def test_the_command_line_refuses_a_corrupted_backup_with_one_line_and_exit_3(
        live, tmp_path, cli):
    flip_a_byte(asyncio.run(create_backup(live, tmp_path)))
    before = asyncio.run(all_rows(live))
    env = settings_env(live, BACKUP_DIR=str(tmp_path))
    for args in (["backup", "verify", "latest"], ["backup", "restore", "latest", "--yes"]):
        result = cli(args, env)
        assert result.returncode == 3, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "checksum mismatch" in lines[0]
    assert asyncio.run(all_rows(live)) == before


def test_a_backup_from_a_newer_schema_is_refused(live, tmp_path):
    backup = asyncio.run(create_backup(live, tmp_path))
    manifest = dict(backup.manifest, schema_revision="9999_future")
    backup.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="newer than this code") as refused:
        asyncio.run(restore_backup(resolve(tmp_path, "latest"), live))
    assert refused.value.exit_code == EXIT_REFUSED


def test_restore_asks_for_the_database_name_without_yes(live, tmp_path, cli):
    asyncio.run(create_backup(live, tmp_path))
    result = cli(["backup", "restore", "latest"], settings_env(live, BACKUP_DIR=str(tmp_path)))
    assert result.returncode == 4 and "--yes" in result.stderr


def loading(process: psutil.Process) -> bool:
    """pg_restore loading the new database (not its earlier `--list` check)."""
    try:
        return process.name() == "pg_restore" and "--single-transaction" in process.cmdline()
    except psutil.Error:
        return False


def test_a_restore_killed_during_pg_restore_leaves_the_live_database_as_it_was(
        live, tmp_path):
    # Enough rows that pg_restore runs for a moment.
    asyncio.run(execute(live, "INSERT INTO calls (campaign_id, phone_number) "
                              "SELECT 1, '+1555' || g FROM generate_series(1, 100000) g"))
    asyncio.run(create_backup(live, tmp_path))
    asyncio.run(execute(live, *CHANGES))
    before = asyncio.run(all_rows(live))

    proc = subprocess.Popen([sys.executable, "-m", "upstream", "backup", "restore", "latest",
                             "--yes"], cwd=ROOT, env=app_env(live, BACKUP_DIR=str(tmp_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        restorer = None
        deadline = time.monotonic() + 60
        while restorer is None and time.monotonic() < deadline and proc.poll() is None:
            restorer = next((c for c in psutil.Process(proc.pid).children(recursive=True)
                             if loading(c)), None)
        assert restorer is not None, "pg_restore never ran"
        restorer.suspend()  # hold it mid-way (SIGSTOP) while the restore command is killed
        os.kill(proc.pid, signal.SIGKILL)
        restorer.kill()
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    # It was killed in the middle: the new database was being loaded, never swapped in.
    assert asyncio.run(databases_like(live, database_name(live) + "_restore_"))

    assert asyncio.run(all_rows(live)) == before

    async def lock_is_free() -> bool:  # the killed restore's lock went with its connection
        conn = await asyncpg.connect(libpq_url(live, "postgres"))
        try:
            for _ in range(100):
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RESTORE_LOCK_KEY):
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await conn.close()

    assert asyncio.run(lock_is_free())


# --- prune -----------------------------------------------------------------------------------


@dataclass
class Dated:
    name: str
    created: datetime
    verified: bool


def test_prune_deletes_by_age_beyond_keep_last_and_never_the_newest_verified():
    now = datetime(2026, 11, 30, tzinfo=UTC)
    backups = [Dated(f"b{d}", now - timedelta(days=d), d == 40) for d in (1, 2, 35, 40, 50)]
    decided = plan(backups, retention_days=30, keep_last=2, now=now)
    assert [b.name for b in decided.delete] == ["b35", "b50"]  # b40: newest verified
    assert [b.name for b in plan(backups, retention_days=0, keep_last=0, now=now).keep] == [
        "b40"]


def test_prune_dry_run_deletes_nothing_then_prune_deletes(live, tmp_path, cli):
    first = asyncio.run(create_backup(live, tmp_path))
    asyncio.run(verify_backup(first, live))
    asyncio.run(create_backup(live, tmp_path))
    newest = asyncio.run(create_backup(live, tmp_path))
    env = settings_env(live, BACKUP_DIR=str(tmp_path))
    args = ["backup", "prune", "--retention-days", "0", "--keep-last", "1"]
    dry = cli([*args, "--dry-run"], env)
    assert dry.returncode == 0 and dry.stdout.count("would delete") == 1
    assert len(list_local(tmp_path)) == 3
    assert cli(args, env).returncode == 0
    assert [b.name for b in list_local(tmp_path)] == [first.name, newest.name]


# --- S3 --------------------------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path):
    import logging

    from moto.server import ThreadedMotoServer

    from tests.support.processes import free_port
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request log is not ours
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_S3_BUCKET": "backups-test"}
    import boto3
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test"
                 ).create_bucket(Bucket="backups-test")
    yield env
    server.stop()


def test_s3_upload_list_download_restore_and_prune(live, tmp_path, s3, cli):
    local = tmp_path / "local"
    env = settings_env(live, BACKUP_DIR=str(local), **s3)
    before = asyncio.run(all_rows(live))
    created = cli(["backup", "create", "--verify"], env)
    assert created.returncode == 0, created.stderr
    verified_name = created.stdout.strip().splitlines()[-1]  # logs come first, on stdout
    newer = cli(["backup", "create"], env)
    assert newer.returncode == 0, newer.stderr

    listed = json.loads(cli(["backup", "list", "--s3", "--json"], env).stdout)
    assert [(b["name"], b["verified"]) for b in listed] == [
        (verified_name, True), (newer.stdout.strip().splitlines()[-1], False)]

    for path in local.iterdir():  # the local copies are gone: S3 is all there is
        path.unlink()
    asyncio.run(execute(live, *CHANGES))
    restored = cli(["backup", "restore", verified_name, "--from-s3", "--yes"], env)
    assert restored.returncode == 0, restored.stderr
    assert asyncio.run(all_rows(live)) == before

    pruned = cli(["backup", "prune", "--retention-days", "0", "--keep-last", "0"], env)
    assert pruned.returncode == 0, pruned.stderr
    listed = json.loads(cli(["backup", "list", "--s3", "--json"], env).stdout)
    assert [b["name"] for b in listed] == [verified_name]  # the newest verified survives


def test_s3_upload_is_refused_when_the_bucket_is_missing(live, tmp_path, s3, cli):
    env = settings_env(live, BACKUP_DIR=str(tmp_path),
                       **dict(s3, AWS_S3_BUCKET="no-such-bucket"))
    result = cli(["backup", "create"], env)
    assert result.returncode == 1
    assert "S3 upload failed" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_backup_list_is_empty_without_backups(tmp_path, live, cli):
    result = cli(["backup", "list"], settings_env(live, BACKUP_DIR=str(tmp_path / "none")))
    assert result.returncode == 0 and result.stdout == ""
    assert Path(tmp_path).exists()


def test_verify_finds_a_backup_by_name_by_path_or_latest(live, tmp_path, cli):
    backup = asyncio.run(create_backup(live, tmp_path / "elsewhere"))
    env = settings_env(live, BACKUP_DIR=str(tmp_path / "elsewhere"))
    for ref in (backup.name, str(backup.path), str(backup.manifest_path), "latest"):
        result = cli(["backup", "verify", ref], env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().endswith(f"{backup.name}: verified")
    unknown = cli(["backup", "verify", "no-such-backup"], env)
    assert unknown.returncode == 2 and "no backup named 'no-such-backup'" in unknown.stderr
