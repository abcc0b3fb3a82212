"""Policy units: durations (`500ms`, `1s`, `15m`, `24h`, `1h30m`) and sizes (`8KiB`, `10MiB`)."""

from __future__ import annotations

import re

# [0-9], not \d: `\d` also matches other scripts' digits (Arabic-Indic five), which int() accepts
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"([0-9]+)[ ]*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `1h30m`; a unit is required so `60` is never ambiguous."""
    text = text.strip()
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(text):
        raise ValueError(f"{text!r} is not a duration (examples: 500ms, 1s, 15m, 24h, 1h30m)")
    return total


def parse_size(text: str) -> int:
    """Bytes in a size such as `8KiB`; a bare integer is bytes."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size (examples: 512, 8KiB, 10MiB, 1GiB)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
