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


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each `xdist_group` of this folder on one worker (one gateway per module).

    pytest-xdist 3.8 groups tests by rewriting `item._nodeid` ("id@group"), which pytest 9.2
    no longer reads (a node's id is `item._id`): `--dist loadgroup` then spreads a group over
    all workers. Here the rewritten id is carried over, for this folder's tests only."""
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # an older pytest reads _nodeid itself
        return
    for item in items:
        grouped = getattr(item, "_nodeid", None)
        if (isinstance(grouped, str) and grouped != item.nodeid and "@" in grouped
                and item.path.is_relative_to(HERE)):
            item._id = NodeId.parse(grouped)


@pytest.fixture(autouse=True)
def _full_only_tests_skip_in_a_bounded_run(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("full") is not None and not FULL:
        pytest.skip("full run only (scripts/test.sh --full)")


@pytest.fixture(scope="session", autouse=True)
def _descriptors_for_floods() -> None:
    # thousands of client sockets here, and the gateways started here inherit the limit
    raise_fd_limit(20_000)
