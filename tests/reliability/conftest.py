"""The reliability suite: real faults against real processes, sized by one knob.

Every test here is `integration` (it starts processes). A test marked `full` runs only in a
full run (`scripts/test.sh --full`, i.e. GATEWAY_TEST_SCALE=full: tests/support/scale.py);
the others run in both, with counts and durations from `scaled(bounded, full)`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.load import raise_fd_limit
from tests.support.scale import FULL

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def _full_only_tests_skip_in_a_bounded_run(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("full") is not None and not FULL:
        pytest.skip("full run only (scripts/test.sh --full)")


@pytest.fixture(scope="session", autouse=True)
def _descriptors_for_floods() -> None:
    # thousands of client sockets here, and the gateways started here inherit the limit
    raise_fd_limit(20_000)
