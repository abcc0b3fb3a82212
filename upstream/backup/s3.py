"""Backups in an S3-compatible store (AWS_S3_BUCKET; AWS_ENDPOINT_URL for MinIO, Ceph, moto...).

Each backup's files go under AWS_S3_PREFIX with their local names. The dump is sent with its
SHA-256 (`ChecksumSHA256`): the store refuses a body that arrives different, and the checksum it
then reports (HeadObject, ChecksumMode=ENABLED) is compared with ours once more. One PUT per
file, so a dump is limited to 5 GiB (multipart uploads report a checksum of checksums).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from upstream.backup import EXIT_FAILED, BackupError
from upstream.backup.catalog import Backup, sha256_file
from upstream.settings import Settings

log = logging.getLogger("upstream.backup")


@dataclass(frozen=True)
class RemoteBackup:
    name: str
    manifest: dict[str, Any]
    verified: bool

    @property
    def created(self) -> datetime:
        return datetime.fromisoformat(self.manifest["created_at"])


class S3Store:
    def __init__(self, settings: Settings) -> None:
        if not settings.s3_bucket:
            raise BackupError("AWS_S3_BUCKET is not set", EXIT_FAILED)
        import boto3
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)

    def _key(self, filename: str) -> str:
        return f"{self.prefix}{filename}"

    def _error(self, action: str, exc: Exception) -> BackupError:
        return BackupError(f"S3 {action} failed (bucket {self.bucket}): {exc}", EXIT_FAILED)

    def _put(self, path: Path, *, checksum: bool) -> None:
        extra: dict[str, Any] = {}
        digest = ""
        if checksum:
            digest = base64.b64encode(bytes.fromhex(sha256_file(path))).decode()
            extra = {"ChecksumSHA256": digest, "ChecksumAlgorithm": "SHA256"}
        with path.open("rb") as body:
            self.client.put_object(Bucket=self.bucket, Key=self._key(path.name), Body=body,
                                   **extra)
        if checksum:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(path.name),
                                           ChecksumMode="ENABLED")
            if head.get("ChecksumSHA256") != digest:
                raise BackupError(f"S3 upload of {path.name}: the store reports checksum "
                                  f"{head.get('ChecksumSHA256')}, expected {digest}")

    def upload(self, backup: Backup) -> None:
        try:
            self._put(backup.path, checksum=True)
            self._put(backup.checksum_path, checksum=False)
            if backup.verify_path.exists():
                self._put(backup.verify_path, checksum=False)
            self._put(backup.manifest_path, checksum=False)  # last: marks it complete
        except BackupError:
            raise
        except Exception as exc:
            raise self._error("upload", exc) from None
        log.info("uploaded %s to s3://%s/%s", backup.name, self.bucket, self.prefix)

    def _keys(self) -> set[str]:
        keys: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.update(obj["Key"][len(self.prefix):] for obj in page.get("Contents", []))
        return keys

    def list(self) -> list[RemoteBackup]:
        """Complete backups in the bucket, oldest first."""
        try:
            keys = self._keys()
            found = []
            for key in keys:
                if not key.endswith(".json") or key.endswith(".verify.json"):
                    continue
                name = key[: -len(".json")]
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                manifest = json.loads(body.read())
                verified = False
                if f"{name}.verify.json" in keys:
                    body = self.client.get_object(Bucket=self.bucket,
                                                  Key=self._key(f"{name}.verify.json"))["Body"]
                    verified = bool(json.loads(body.read()).get("ok"))
                found.append(RemoteBackup(name, manifest, verified))
        except Exception as exc:
            raise self._error("list", exc) from None
        return sorted(found, key=lambda b: (b.manifest["created_at"], b.name))

    def download(self, name: str, directory: Path) -> Path:
        """Fetch a backup's files into `directory`; returns its manifest's path."""
        remote = {b.name: b for b in self.list()}
        if name == "latest" and remote:
            name = list(remote)[-1]
        if name not in remote:
            raise BackupError(f"no backup named {name!r} in s3://{self.bucket}/{self.prefix}",
                              2)
        manifest = remote[name].manifest
        directory.mkdir(parents=True, exist_ok=True)
        try:
            for filename in (manifest["file"], f"{manifest['file']}.sha256", f"{name}.json"):
                tmp = directory / f".{filename}.partial"
                self.client.download_file(self.bucket, self._key(filename), str(tmp))
                tmp.rename(directory / filename)
        except Exception as exc:
            raise self._error("download", exc) from None
        log.info("downloaded %s from s3://%s/%s", name, self.bucket, self.prefix)
        return directory / f"{name}.json"

    def delete(self, backup: RemoteBackup) -> None:
        files = [backup.manifest["file"], f"{backup.manifest['file']}.sha256",
                 f"{backup.name}.verify.json", f"{backup.name}.json"]
        try:
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(f)} for f in files]})
        except Exception as exc:
            raise self._error("delete", exc) from None
