"""The effective policy as data and as YAML, with secrets redacted.

Used by `gateway check --print` and the admin `/config` endpoint: what the gateway runs, after
`extends` and `${VAR}` interpolation, but never a password. Redacted: the password part of any
URL (`redis://:secret@host` -> `redis://:***@host`) and the value of any key whose name says it
is a secret (password, secret, token, dsn, api_key).
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from gateway.config.source import Document

REDACTED = "***"
_SECRET_KEY = re.compile(r"password|secret|token|dsn|api_?key", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.\-]*://[^:/@]*:)([^@/]+)(@)", re.IGNORECASE)


def policy_data(document: Document) -> dict[str, Any]:
    """The merged, interpolated policy as plain values, secrets redacted."""
    data = SafeConstructor().construct_document(document.root)
    return redact(data)


def policy_yaml(document: Document) -> str:
    return yaml.safe_dump(policy_data(document), sort_keys=False, default_flow_style=False)


def redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return REDACTED
        return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<3>", value)
    return value
