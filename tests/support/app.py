"""Start the demo application (`python -m upstream ...`) as a real process on a test database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.processes import ROOT, free_port, stop, wait_for_port


def app_env(database_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": database_url, "ENVIRONMENT": "development",
            "SECRET_KEY": "test-secret-key-of-enough-length-0123456789", **extra}


def run_app(args: list[str], env: dict[str, str], stdin: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "upstream", *args], cwd=ROOT, env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


@contextmanager
def serving(database_url: str, log: Path, **extra: str) -> Iterator[str]:
    """`python -m upstream serve` on a free port; yields its base URL."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "upstream", "serve", "--port", str(port)], cwd=ROOT,
            env=app_env(database_url, **extra), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(port, proc, timeout=30)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)
