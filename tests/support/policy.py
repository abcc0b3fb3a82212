"""Policy files for the tests: written into a folder, loaded, or refused with their problems."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

from gateway.config import PolicyError, load_policy


def write_policy(folder: Path, text: str | bytes, name: str = "policy.yaml") -> Path:
    """`text` as the file `folder/name` (str as UTF-8, lone surrogates kept); its path."""
    path = folder / name
    path.write_bytes(text if isinstance(text, bytes)
                     else text.encode("utf-8", "surrogatepass"))
    return path


def problems(path: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """The problems `gateway.config.load_policy` reports for `path` (it must refuse it);
    `environ` defaults to the process environment, as load_policy's does."""
    with pytest.raises(PolicyError) as info:
        load_policy(path, environ)
    return [str(p) for p in info.value.problems]
