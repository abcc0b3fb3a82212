from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.processes import Gateway, Upstream, start_gateway, start_upstream, stop


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = start_upstream()
    yield up
    stop(up.proc)


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def make(upstream_url: str, **kwargs) -> Gateway:
        gw = start_gateway(tmp_path, upstream_url, **kwargs)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        stop(gw.proc)


@pytest.fixture
def gateway(gateway_factory, upstream: Upstream) -> Gateway:
    return gateway_factory(upstream.url)
