"""What a backup is on disk, and finding one by name, path or `latest`.

    upstream-20261130T101500123456Z.dump          pg_dump -Fc (or .sql.gz: plain SQL, gzipped)
    upstream-20261130T101500123456Z.dump.sha256   `sha256sum` format
    upstream-20261130T101500123456Z.json          the manifest, written last: its presence
                                                  means the backup is complete
    upstream-20261130T101500123456Z.verify.json   the last verification's result

Files being written have a leading `.` and a `.partial` suffix; they are renamed into place
when complete, so a crash never leaves something that looks like a backup.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from upstream.backup import EXIT_REFUSED, EXIT_USAGE, BackupError

SUFFIXES = (".dump", ".sql.gz")


@dataclass(frozen=True)
class Backup:
    name: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def path(self) -> Path:
        return self.directory / self.manifest["file"]

    @property
    def manifest_path(self) -> Path:
        return self.directory / f"{self.name}.json"

    @property
    def checksum_path(self) -> Path:
        return self.directory / f"{self.manifest['file']}.sha256"

    @property
    def verify_path(self) -> Path:
        return self.directory / f"{self.name}.verify.json"

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def verification(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.verify_path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def verified(self) -> bool:
        result = self.verification
        return bool(result and result.get("ok"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


def _load(manifest_path: Path) -> Backup | None:
    try:
        manifest = json.loads(manifest_path.read_text())
        name = manifest_path.name[: -len(".json")]
        if not isinstance(manifest, dict) or "file" not in manifest:
            return None
        return Backup(name, manifest_path.parent, manifest)
    except (OSError, ValueError):
        return None


def list_local(directory: Path) -> list[Backup]:
    """Complete backups in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.glob("*.json"):
        if path.name.startswith(".") or path.name.endswith(".verify.json"):
            continue
        backup = _load(path)
        if backup is not None:
            found.append(backup)
    return sorted(found, key=lambda b: (b.manifest.get("created_at", ""), b.name))


def resolve(directory: Path, ref: str) -> Backup:
    """A backup by name (from `list`), by the path of its dump or manifest, or `latest`."""
    if ref == "latest":
        backups = list_local(directory)
        if not backups:
            raise BackupError(f"no backups in {directory}", EXIT_USAGE)
        return backups[-1]
    path = Path(ref)
    if path.exists() and path.is_file():
        name = path.name
        for suffix in (".json", *SUFFIXES):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        manifest_path = path.parent / f"{name}.json"
        if not manifest_path.exists():
            raise BackupError(f"{ref}: no manifest {manifest_path.name} next to it",
                              EXIT_REFUSED)
        backup = _load(manifest_path)
        if backup is None:
            raise BackupError(f"{manifest_path}: the manifest is not valid JSON", EXIT_REFUSED)
        return backup
    for backup in list_local(directory):
        if backup.name == ref or backup.manifest["file"] == ref:
            return backup
    raise BackupError(f"no backup named {ref!r} in {directory} (see: backup list)", EXIT_USAGE)
