"""Where the machine's CPU went during a run: the processes of the run (locust, the gateway, the
demo API, Redis, PostgreSQL's backends for the run's database) and everything else.

A latency target measured on a machine that other work saturates says little about the system
under test: the runner reports how much CPU the rest of the machine took, and says when that
was too much for a latency failure to count.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class CpuUse:
    seconds: float
    cpus: int
    by_process: dict[str, float]  # CPU seconds of the run's processes, by name
    others: float  # CPU seconds of everything else on the machine (VM steal included)

    @property
    def others_cpus(self) -> float:
        """How many CPUs the rest of the machine kept busy, on average."""
        return self.others / self.seconds if self.seconds > 0 else 0.0


def _reaped() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _busy(t) -> float:
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


class CpuMeter:
    """Start before the load, stop after it."""

    def __init__(self, database: str | None) -> None:
        self.database = database  # PostgreSQL backends whose title names it are the run's

    def _ours(self) -> dict[int, tuple[str, float]]:
        found: dict[int, tuple[str, float]] = {}
        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            self._add(found, proc, _name(proc))
        if self.database:
            for proc in psutil.process_iter(["name", "cmdline"]):
                title = " ".join(proc.info["cmdline"] or ())
                if proc.info["name"] == "postgres" and f" {self.database} " in f" {title} ":
                    self._add(found, proc, "postgresql")
        return found

    @staticmethod
    def _add(found: dict[int, tuple[str, float]], proc: psutil.Process, name: str) -> None:
        try:
            t = proc.cpu_times()
            found[proc.pid] = (name, t.user + t.system)
        except psutil.Error:
            pass

    def start(self) -> None:
        self._t0, self._busy0, self._ours0 = time.monotonic(), _busy(psutil.cpu_times()), \
            self._ours()
        self._reaped0 = _reaped()

    def stop(self) -> CpuUse:
        seconds = time.monotonic() - self._t0
        busy = _busy(psutil.cpu_times()) - self._busy0
        by_process: dict[str, float] = {}
        for pid, (name, cpu) in self._ours().items():
            used = cpu - self._ours0.get(pid, (name, 0.0))[1]
            by_process[name] = by_process.get(name, 0.0) + max(0.0, used)
        # locust has exited by now: its CPU is in the runner's waited-for children's
        by_process["locust"] = by_process.get("locust", 0.0) + _reaped() - self._reaped0
        ours = sum(by_process.values())
        return CpuUse(seconds, os.cpu_count() or 1,
                      {k: round(v, 2) for k, v in sorted(by_process.items())},
                      max(0.0, busy - ours))


def _name(proc: psutil.Process) -> str:
    """locust, gateway, upstream, redis, the runner itself..."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    text = " ".join(cmd)
    for name in ("locust", "gateway", "upstream", "redis"):
        if f"-m {name}" in text or (name == "redis" and "redis-server" in text):
            return name
    if "postgres" in text:
        return "postgresql"
    return "runner" if proc.pid == os.getpid() else os.path.basename(cmd[0]) if cmd else "?"
