"""The command line: serve | migrate | seed | users add | backup ... | db start|stop|url.

Exit codes: 0 success; 1 the operation failed (one line on stderr); 2 bad usage or unknown
backup; 3 a backup refused (checksum, truncation, manifest or revision mismatch); 4 a restore
not confirmed. Logs go to stdout (`--syslog` also sends them to the local syslog).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import logging.handlers
import os
import sys
from pathlib import Path

from upstream import __version__
from upstream.backup import EXIT_NOT_CONFIRMED, EXIT_USAGE, BackupError
from upstream.settings import Settings, SettingsError, load_settings

log = logging.getLogger("upstream")


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _setup_logging(syslog: bool) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("UPSTREAM_LOG_LEVEL", "INFO").upper())
    if syslog:
        address = "/dev/log" if Path("/dev/log").exists() else ("localhost", 514)
        sys_handler = logging.handlers.SysLogHandler(address=address)
        sys_handler.setFormatter(logging.Formatter("upstream[%(process)d]: %(message)s"))
        root.addHandler(sys_handler)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "pgserver", "filelock",
                  "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _database_url(settings: Settings) -> str:
    from upstream.db import resolve_database_url
    return resolve_database_url(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from aiohttp import web

    from upstream.api import make_app
    if settings.secret_key_generated:
        log.warning("SECRET_KEY is not set: generated a random one for this process "
                    "(tokens stop working at restart; set SECRET_KEY to keep them)")
    url = _database_url(settings)
    from upstream.db import redacted
    log.info("upstream %s (%s) on %s:%d, database %s", settings.release_version,
             settings.environment, args.host, args.port, redacted(url))
    try:
        web.run_app(make_app(settings, url), host=args.host, port=args.port, print=None,
                    access_log=None)
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc}") from None
    return 0


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from alembic.util import CommandError as AlembicError

    from upstream import schema
    try:
        if args.action == "history":
            schema.history()
            return 0
        if args.action == "upgrade" and args.sql:
            schema.upgrade("postgresql://localhost/upstream" if not settings.database_url
                           else settings.database_url, args.revision or "head", sql=True)
            return 0
        url = _database_url(settings)
        if args.action == "upgrade":
            schema.upgrade(url, args.revision or "head")
        elif args.action == "downgrade":
            if not args.revision:
                raise CommandError("migrate downgrade needs a revision (e.g. -1 or base)",
                                   EXIT_USAGE)
            schema.downgrade(url, args.revision)
        elif args.action == "current":
            schema.current(url)
        elif args.action == "check":
            schema.check(url)
    except AlembicError as exc:
        raise CommandError(f"migrate {args.action}: {exc}") from None
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from upstream.seed import seed
    url = _database_url(settings)
    added = asyncio.run(seed(url, users=not settings.is_production))
    log.info("seed: added %(users)d users, %(campaigns)d campaigns, %(calls)d calls", added)
    if not settings.is_production:
        log.info("demo logins (development only): admin / admin-password, "
                 "operator / operator-password")
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat: ") != password:
            raise CommandError("the passwords differ", EXIT_USAGE)
    if len(password) < 8:
        raise CommandError("the password must have at least 8 characters", EXIT_USAGE)
    return password


def cmd_users(args: argparse.Namespace, settings: Settings) -> int:
    from upstream.seed import create_user
    if not 1 <= len(args.name) <= 64:
        raise CommandError("a user name has 1 to 64 characters", EXIT_USAGE)
    password = _read_password(args.password_stdin)
    url = _database_url(settings)
    if not asyncio.run(create_user(url, args.name, password, args.role)):
        raise CommandError(f"user {args.name} already exists")
    log.info("user %s added (%s)", args.name, args.role)
    return 0


def _confirm(database: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise CommandError("restore replaces the live database: confirm with --yes "
                           "(no terminal to ask on)", EXIT_NOT_CONFIRMED)
    answer = input(f"This replaces database {database!r}. Type its name to confirm: ")
    if answer.strip() != database:
        raise CommandError("not confirmed: nothing was changed", EXIT_NOT_CONFIRMED)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from upstream.backup import catalog
    directory = settings.backup_dir
    action = args.action
    if action == "list":
        return _backup_list(args, settings)
    if action == "prune":
        return _backup_prune(args, settings)
    url = _database_url(settings)
    if action == "create":
        from upstream.backup.create import create_backup
        backup = asyncio.run(create_backup(url, directory, args.format))
        if args.verify:
            from upstream.backup.verify import verify_backup
            asyncio.run(verify_backup(backup, url))
        if settings.s3_bucket and not args.no_upload:
            from upstream.backup.s3 import S3Store
            S3Store(settings).upload(backup)
        print(backup.name)
        return 0
    if args.from_s3:  # downloaded into BACKUP_DIR: from then on it is a local backup too
        from upstream.backup.s3 import S3Store
        manifest = S3Store(settings).download(args.backup, directory)
        backup = catalog.resolve(directory, str(manifest))
    else:
        backup = catalog.resolve(directory, args.backup)
    if action == "verify":
        from upstream.backup.verify import verify_backup
        asyncio.run(verify_backup(backup, url))
        print(f"{backup.name}: verified")
        return 0
    from upstream.backup.restore import check_restorable, restore_backup
    from upstream.db import database_name
    check_restorable(backup)  # refuse a bad backup before asking anything
    _confirm(database_name(url), args.yes)
    result = asyncio.run(restore_backup(backup, url))
    print(f"{backup.name}: restored into {result['database']}; previous database kept as "
          f"{result['previous']}")
    return 0


def _backup_list(args: argparse.Namespace, settings: Settings) -> int:
    from upstream.backup import catalog
    if args.s3:
        from upstream.backup.s3 import S3Store
        rows = [(b.name, b.manifest, b.verified) for b in S3Store(settings).list()]
    else:
        rows = [(b.name, b.manifest, b.verified) for b in catalog.list_local(settings.backup_dir)]
    if args.json:
        print(json.dumps([{"name": n, "verified": v, **m} for n, m, v in rows], indent=2))
        return 0
    for name, m, verified in rows:
        rows_total = sum(m.get("row_counts", {}).values())
        print(f"{name}  {m['created_at']}  {m['format']:6}  {m['size']:>12} B  "
              f"{rows_total:>9} rows  rev {m.get('schema_revision')}  "
              f"{'verified' if verified else 'unverified'}")
    return 0


def _backup_prune(args: argparse.Namespace, settings: Settings) -> int:
    from upstream.backup import catalog
    from upstream.backup.prune import delete_local, plan
    retention = settings.retention_days if args.retention_days is None else args.retention_days
    keep_last = settings.keep_last if args.keep_last is None else args.keep_last
    verb = "would delete" if args.dry_run else "deleted"
    local = plan(catalog.list_local(settings.backup_dir), retention_days=retention,
                 keep_last=keep_last)
    for backup in local.delete:
        if not args.dry_run:
            delete_local(backup)
        print(f"{verb} {backup.name}")
    if settings.s3_bucket and not args.local_only:
        from upstream.backup.s3 import S3Store
        store = S3Store(settings)
        remote = plan(store.list(), retention_days=retention, keep_last=keep_last)
        for backup in remote.delete:
            if not args.dry_run:
                store.delete(backup)
            print(f"{verb} s3:{backup.name}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m upstream",
                                     description="The operator demo API and its tools.")
    parser.add_argument("--version", action="version", version=__version__)
    parser.add_argument("--syslog", action="store_true", help="also log to the local syslog")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    migrate = sub.add_parser("migrate", help="Alembic migrations")
    migrate.add_argument("action", choices=["upgrade", "downgrade", "current", "history",
                                            "check"])
    migrate.add_argument("revision", nargs="?")
    migrate.add_argument("--sql", action="store_true", help="upgrade: print the SQL only")

    sub.add_parser("seed", help="load the demo data (idempotent)")

    users = sub.add_parser("users", help="manage users")
    users_sub = users.add_subparsers(dest="users_action", required=True)
    add = users_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", choices=["admin", "operator"], required=True)
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from standard input")

    backup = sub.add_parser("backup", help="database backups")
    backup_sub = backup.add_subparsers(dest="action", required=True)
    create = backup_sub.add_parser("create", help="pg_dump into BACKUP_DIR")
    create.add_argument("--format", choices=["custom", "plain"], default="custom")
    create.add_argument("--verify", action="store_true", help="verify it right away")
    create.add_argument("--no-upload", action="store_true", help="skip the S3 upload")
    listing = backup_sub.add_parser("list", help="list backups, oldest first")
    listing.add_argument("--s3", action="store_true", help="list the bucket instead")
    listing.add_argument("--json", action="store_true")
    for name in ("verify", "restore"):
        p = backup_sub.add_parser(name, help=f"{name} a backup: a name, a path or latest")
        p.add_argument("backup")
        p.add_argument("--from-s3", action="store_true", help="download it from S3 first")
        if name == "restore":
            p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    prune = backup_sub.add_parser("prune", help="delete old backups")
    prune.add_argument("--dry-run", action="store_true")
    prune.add_argument("--keep-last", type=int)
    prune.add_argument("--retention-days", type=int)
    prune.add_argument("--local-only", action="store_true", help="leave S3 alone")

    db = sub.add_parser("db", help="the embedded PostgreSQL (when DATABASE_URL is unset)")
    db.add_argument("action", choices=["start", "stop", "url"])
    return parser


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from upstream import embedded
    if args.action == "stop":
        print("stopped" if embedded.stop(settings.data_dir) else "not running")
        return 0
    url = _database_url(settings)
    if args.action == "url":
        print(url)
    return 0


COMMANDS = {"serve": cmd_serve, "migrate": cmd_migrate, "seed": cmd_seed, "users": cmd_users,
            "backup": cmd_backup, "db": cmd_db}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.syslog)
    try:
        settings = load_settings()
        return COMMANDS[args.command](args, settings)
    except (CommandError, BackupError) as exc:
        print(f"upstream: {exc}", file=sys.stderr)
        return exc.exit_code
    except SettingsError as exc:
        print(f"upstream: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("upstream: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback for an operator
        log.debug("failed", exc_info=True)
        print(f"upstream: {args.command} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
