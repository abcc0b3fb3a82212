"""One knob for the size of the reliability suite (tests/reliability/).

`GATEWAY_TEST_SCALE=full` (set by `scripts/test.sh --full`) runs the full scenarios: thousands
of hostile connections, the 100,000-example fuzzer, the long soaks. Unset, the same tests run
bounded versions sized for the default suite's time budget, and assert only what cannot flake
on a busy machine.
"""

from __future__ import annotations

import os

FULL = os.environ.get("GATEWAY_TEST_SCALE", "").lower() == "full"


def scaled(bounded, full):
    """`full` in a full run, else `bounded`."""
    return full if FULL else bounded
