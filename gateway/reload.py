"""Policy reload: on SIGHUP and when a policy file changes on disk.

A reload validates the whole new policy first; only a valid one is swapped in, whole, by the
caller's `apply`; an invalid one is logged and the running policy stays. Changes are noticed by
polling `os.stat` of every file of the `extends` chain (following symlinks), which also sees the
atomic `..data` symlink swap that Kubernetes does for a mounted ConfigMap, where the watched path
itself never changes. A file rewritten with the same content is not reloaded (the content digest
is compared).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from gateway.config import Loaded, PolicyError, load_policy
from gateway.observability.metrics import CONFIG_RELOADS

log = logging.getLogger("gateway.reload")

Fingerprint = tuple[tuple[int, int, int, int] | None, ...]


def fingerprint(files: Iterable[str]) -> Fingerprint:
    out = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            out.append(None)
        else:
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class PolicyReloader:
    def __init__(self, config_path: str, current: Loaded, apply: Callable[[Loaded], None]) -> None:
        self.config_path = config_path
        self._apply = apply
        self._digest = current.document.digest
        self._files = current.document.files
        self._seen = fingerprint(self._files)
        # the last reload attempt, for the admin /config: time, trigger, result, problems
        self.last: dict[str, Any] | None = None

    def _record(self, reason: str, result: str, problems: list[str]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.last = {"at": now, "trigger": reason, "result": result, "problems": problems}

    def reload(self, reason: str) -> bool:
        """Load, validate and apply the policy; False (and the old policy kept) when invalid."""
        try:
            loaded = load_policy(self.config_path)
        except PolicyError as exc:
            CONFIG_RELOADS.labels("failure").inc()
            log.error("reload (%s) failed, keeping the running policy:\n%s", reason, exc)
            self._record(reason, "failure", [str(p) for p in exc.problems])
            return False
        self._files = loaded.document.files
        self._seen = fingerprint(self._files)
        if loaded.document.digest == self._digest and reason != "SIGHUP":
            return True
        self._digest = loaded.document.digest
        self._apply(loaded)
        self._record(reason, "success", [str(w) for w in loaded.warnings])
        CONFIG_RELOADS.labels("success").inc()
        log.info("policy reloaded (%s) from %s, digest %s", reason, self.config_path,
                 loaded.document.digest[:12])
        return True

    async def watch(self, interval: float) -> None:
        """Poll the policy files every `interval` seconds; reload once a change has settled.

        A change is acted on only when the files look the same on two polls in a row, so an
        editor that truncates and then writes is not caught half way.
        """
        pending: Fingerprint | None = None
        while True:
            await asyncio.sleep(interval)
            now = fingerprint(self._files)
            if now == self._seen:
                pending = None
            elif now != pending:
                pending = now
            else:
                pending = None
                self._seen = now
                self.reload("file changed")
