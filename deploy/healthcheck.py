"""Container health check for the image (no curl in python:3.12-slim): exit 0 when healthy.

    healthcheck.py URL                         GET URL answers 2xx within 3 s
    healthcheck.py --file PATH --max-age SECS  PATH exists and changed in the last SECS seconds

The Dockerfile's HEALTHCHECK runs the first form on the gateway's admin /health; docker-compose.yml
also uses it for the demo API (:8000/health) and the second form for the backup loop (the file
deploy/backup-loop.sh touches after each successful backup). Unhealthy: exit 1, bad usage:
exit 2, each with one line on stderr.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

USAGE = "usage: healthcheck.py URL | healthcheck.py --file PATH --max-age SECONDS"


def check_url(url: str) -> str | None:
    """None when `url` answers 2xx, else why not."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        return f"{url}: {getattr(exc, 'reason', exc)}"
    return None if 200 <= status < 300 else f"{url}: HTTP {status}"


def check_file(path: Path, max_age: float) -> str | None:
    """None when `path` exists and was modified less than `max_age` seconds ago."""
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        return f"{path}: missing"
    return None if age <= max_age else f"{path}: {age:.0f} s old (at most {max_age:.0f} s)"


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 1 and not argv[0].startswith("-"):
            problem = check_url(argv[0])
        elif len(argv) == 4 and argv[0] == "--file" and argv[2] == "--max-age":
            max_age = float(argv[3])
            if not max_age > 0:
                raise ValueError(f"--max-age must be a positive number of seconds, got {argv[3]}")
            problem = check_file(Path(argv[1]), max_age)
        else:
            raise ValueError(USAGE)
    except ValueError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 2
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
