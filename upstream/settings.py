"""Settings from the environment (the production plan's names), read once into a frozen object.

DATABASE_URL        postgresql://user:pass@host:5432/db (also ?host=/socket/dir); unset: the
                    embedded PostgreSQL 16 under UPSTREAM_DATA_DIR (default .data/)
ENVIRONMENT         development (default) | production | test
RELEASE_VERSION     reported by /health (default: the package version)
SECRET_KEY          signs the JWTs; required in production, generated in development
JWT_EXPIRATION_MINUTES  default 60
BACKUP_DIR          default backups/ (in the working directory)
RETENTION_DAYS      default 30
ENABLE_METRICS      true (default) | false: /metrics answered, or 404
BACKUP_KEEP_LAST    prune keeps at least this many recent backups (default 7)
AWS_S3_BUCKET       optional: backups are uploaded there; AWS_S3_PREFIX (default backups/),
                    AWS_ENDPOINT_URL (any S3-compatible store), AWS_ACCESS_KEY_ID,
                    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION as boto3 reads them
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from upstream import __version__

MIN_SECRET_LENGTH = 32


class SettingsError(ValueError):
    """A setting is missing or malformed; the command stops with one line saying which."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    environment: str
    release_version: str
    secret_key: str
    secret_key_generated: bool
    jwt_expiration_minutes: int
    backup_dir: Path
    retention_days: int
    keep_last: int
    data_dir: Path
    s3_bucket: str | None
    s3_prefix: str
    s3_endpoint_url: str | None
    enable_metrics: bool = True

    @property
    def is_production(self) -> bool:
        return self.environment == "production"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the settings; a missing SECRET_KEY is an error in production only."""
    env = os.environ if env is None else env
    environment = env.get("ENVIRONMENT", "").strip() or "development"
    secret = env.get("SECRET_KEY", "")
    generated = False
    if not secret:
        if environment == "production":
            raise SettingsError("SECRET_KEY must be set when ENVIRONMENT=production")
        secret, generated = secrets.token_urlsafe(48), True
    elif environment == "production" and len(secret) < MIN_SECRET_LENGTH:
        raise SettingsError(f"SECRET_KEY must have at least {MIN_SECRET_LENGTH} characters "
                            "in production (it signs the access tokens, HS256)")
    return Settings(
        database_url=env.get("DATABASE_URL", "").strip() or None,
        environment=environment,
        release_version=env.get("RELEASE_VERSION", "").strip() or __version__,
        secret_key=secret,
        secret_key_generated=generated,
        jwt_expiration_minutes=_int(env, "JWT_EXPIRATION_MINUTES", 60, minimum=1),
        backup_dir=Path(env.get("BACKUP_DIR", "").strip() or "backups"),
        retention_days=_int(env, "RETENTION_DAYS", 30),
        keep_last=_int(env, "BACKUP_KEEP_LAST", 7),
        data_dir=Path(env.get("UPSTREAM_DATA_DIR", "").strip() or ".data"),
        s3_bucket=env.get("AWS_S3_BUCKET", "").strip() or None,
        s3_prefix=env.get("AWS_S3_PREFIX", "backups/"),
        s3_endpoint_url=env.get("AWS_ENDPOINT_URL", "").strip() or None,
        enable_metrics=_bool(env, "ENABLE_METRICS", True),
    )


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    text = env.get(name, "").strip().lower()
    if not text:
        return default
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {text!r}")
