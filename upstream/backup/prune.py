"""`backup prune`: delete backups older than RETENTION_DAYS beyond the newest N (keep-last),
locally and in S3. The newest verified backup is never deleted, whatever its age."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from upstream.backup.catalog import Backup

log = logging.getLogger("upstream.backup")


class _Dated(Protocol):
    name: str

    @property
    def created(self) -> datetime: ...

    @property
    def verified(self) -> bool: ...


@dataclass(frozen=True)
class PrunePlan:
    keep: list
    delete: list


def plan(backups: Sequence[_Dated], *, retention_days: int, keep_last: int,
         now: datetime | None = None) -> PrunePlan:
    """Which backups to delete: older than the retention, not among the newest `keep_last`,
    and not the newest verified one."""
    now = now or datetime.now(UTC)
    newest_first = sorted(backups, key=lambda b: b.created, reverse=True)
    verified = [b for b in newest_first if b.verified]
    protected = {b.name for b in newest_first[:keep_last]}
    if verified:
        protected.add(verified[0].name)
    cutoff = now - timedelta(days=retention_days)
    delete = [b for b in newest_first if b.name not in protected and b.created < cutoff]
    keep = [b for b in newest_first if b not in delete]
    return PrunePlan(keep=keep, delete=delete)


def delete_local(backup: Backup) -> None:
    for path in (backup.manifest_path, backup.path, backup.checksum_path, backup.verify_path):
        path.unlink(missing_ok=True)  # the manifest first: a half-deleted backup is not listed
