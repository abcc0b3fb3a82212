"""Logical backups of the application's database: create, list, verify, restore, prune, S3.

A backup is three files in BACKUP_DIR (see catalog.py): the dump (`pg_dump -Fc`, or plain SQL
gzipped), its `.sha256` sidecar and a JSON manifest; a fourth, `.verify.json`, records the last
verification. Every step that can refuse raises `BackupError` with one clear line and the exit
code the command returns.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1          # the operation failed (database, pg_dump/pg_restore, S3 ...)
EXIT_USAGE = 2           # bad arguments, unknown backup
EXIT_REFUSED = 3         # integrity: checksum, truncated file, manifest or revision mismatch
EXIT_NOT_CONFIRMED = 4   # restore: the confirmation was not given


class BackupError(Exception):
    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code
