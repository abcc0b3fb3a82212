"""Reading the order in which queued work ran against other work of the loop (tests of
per-turn bounds: http/reaper.py, http/arrivals.py)."""

from __future__ import annotations


def runs_of(order: list[str], prefix: str) -> list[int]:
    """The lengths of the runs of items starting with `prefix` between the other items: how
    many ran between two turns of the other work."""
    runs, current = [], 0
    for item in order:
        if item.startswith(prefix):
            current += 1
        else:
            runs.append(current)
            current = 0
    runs.append(current)
    return runs
