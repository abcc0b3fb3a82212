from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.postgres import Postgres, migrated_template, start_postgres
from tests.support.processes import Gateway, Upstream, start_gateway, start_upstream, stop
from tests.support.scale import FULL

# --- unit and integration tests --------------------------------------------------------------
# A test is `integration` when it starts a process or opens a socket: through one of these
# fixtures, or marked so (by module with `pytestmark`, or one by one). Every other test is
# `unit`, and is held to it: opening a socket or starting a process fails it at once.

PROCESS_FIXTURES = frozenset({
    "upstream", "gateway", "gateway_factory", "postgres", "app_template", "seeded_template",
    "seeded_database_url", "database_url", "aiohttp_client", "aiohttp_server",
    "aiohttp_raw_server", "aiohttp_unused_port",
})


# tryfirst: xdist's own hook names each item's group from its xdist_group marks (loadgroup);
# run after it, the `exclusive` group added here was never seen, and the exclusive tests were
# spread over every worker, handing the lock over (and waiting for a drain) again and again.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("exclusive") is not None:
            item.add_marker(pytest.mark.xdist_group("exclusive"))
        if item.get_closest_marker("integration") is None:
            if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
                item.add_marker(pytest.mark.integration)
            else:
                item.add_marker(pytest.mark.unit)
    items.sort(key=_order)


def _order(item: pytest.Item) -> tuple[int, float]:
    """The order tests are handed to the xdist workers in:

    0. the exclusive tests (their worker starts its block while the pending list is full, so
       it is never left waiting for work);
    1. the long ones, spread over the workers at the start rather than left at the end;
    2. the other integration tests;
    3. the heavy ones, which cannot run beside the exclusive block, the longest first
       (`heavy(seconds=N)`);
    4. the unit tests: short, they fill the gaps at the end. xdist queues up to three tests
       on a worker; queued behind a long heavy test, they cost little, where two more heavy
       ones kept one worker busy ~30 s after the others were done.
    """
    if item.get_closest_marker("exclusive") is not None:
        return 0, 0.0
    if item.get_closest_marker("heavy") is not None:
        return 3, -_heavy_seconds(item)
    if item.get_closest_marker("slow") is not None:
        return 1, 0.0
    if item.get_closest_marker("unit") is not None:
        return 4, 0.0
    return 2, 0.0


def _heavy_seconds(item: pytest.Item) -> float:
    """About how long a heavy test runs (its `heavy(seconds=N)`, measured on 2 cores)."""
    mark = item.get_closest_marker("heavy")
    return float(mark.kwargs.get("seconds", 0)) if mark is not None else 0.0


def _refuse(what: str) -> Callable[..., None]:
    def refused(*args, **kwargs) -> None:
        raise AssertionError(f"a unit test {what}: mark it `integration` (tests/conftest.py)")
    return refused


@pytest.fixture(autouse=True)
def _unit_tests_open_no_socket_and_start_no_process(
        request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as m:
        for method in ("bind", "connect", "connect_ex"):
            m.setattr(socket.socket, method, _refuse(f"called socket.{method}"))
        m.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
        yield


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


@pytest.fixture(scope="module")
def module_gateway(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream
                   ) -> Iterator[Gateway]:
    """One default gateway for the tests of a module that only send it requests and read the
    answers (none counts its connections, metrics or log lines): started once for them, not
    once per test. Such a module is one xdist group, so one worker starts it."""
    gw = start_gateway(tmp_path_factory.mktemp("gateway"), upstream.url)
    yield gw
    stop(gw.proc)


# --- tests that must run alone, or nearly ---------------------------------------------------
# A test marked `exclusive` measures wall-clock latency or a request rate against a fixed bound
# (fault tests with a load generator): under pytest-xdist it runs beside at most COMPANIONS
# other tests, none of them `heavy` (one that loads the machine at full speed: wrk, a
# benchmark, a whole stack). The exclusive tests mostly wait (on a Redis coming back, a paced
# load): alone, they used half a core for ~90 s while the other workers idled. Measured on
# 2 cores beside two workers of ordinary integration tests: their worst latency stayed within
# 140 ms, as alone, where the bound is 1 s.
#
# A readers-writer lock over the xdist workers of this run (flock on files): every other test
# holds it shared, or, while an exclusive block holds it, one of the COMPANIONS slot files. An
# exclusive test takes the turnstile first, so that no test takes the lock meanwhile, then
# waits for the running ones to end. The exclusive tests share one xdist group (one worker, one
# after the other), and that worker keeps the lock from the first of them to the last: taken
# and given back per test, each one would wait again for every other worker's running test to
# end (a minute and more, lost, over the ~50 of them).

# A full run (tests/support/scale.py) asserts latency ratios against a quiet run: none there.
COMPANIONS = 0 if FULL else 3
WAIT_S = 0.05  # between two tries for the lock or a companion slot


@pytest.fixture(scope="session")
def _lock_files(tmp_path_factory: pytest.TempPathFactory,
                worker_id: str) -> Path | None:
    if worker_id == "master":  # not under xdist: nothing runs beside a test
        return None
    return tmp_path_factory.getbasetemp().parent  # one folder for all workers of this run


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    with path.open("a") as file:
        fcntl.flock(file, mode)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _try_flock(path: Path, mode: int) -> contextlib.AbstractContextManager[None] | None:
    """The lock taken at once (a context that gives it back), or None when it is held."""
    file = path.open("a")
    try:
        fcntl.flock(file, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        file.close()
        return None

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()
    return held()


class _Block:
    """This worker's exclusive hold while it runs consecutive exclusive tests.

    Kept from one exclusive test to the next, it is given back when the next test is not
    exclusive, or when no test starts within LEASE_S: xdist starts a worker's last queued test
    only once more work arrives, and none may arrive while the others wait for this lock."""

    LEASE_S = 2.0

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: contextlib.ExitStack | None = None
        self._timer: threading.Timer | None = None

    def take(self, folder: Path) -> None:
        with self._guard:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._held is not None:
                return  # still held from the previous exclusive test
        held = contextlib.ExitStack()
        with _flock(folder / "exclusive.turnstile", fcntl.LOCK_EX):  # no new shared holder
            held.enter_context(_flock(folder / "exclusive.lock", fcntl.LOCK_EX))  # they ended
        with self._guard:
            self._held = held

    def keep_for_a_while(self) -> None:
        with self._guard:
            if self._held is not None and self._timer is None:
                self._timer = threading.Timer(self.LEASE_S, self.give_back)
                self._timer.daemon = True
                self._timer.start()

    def give_back(self) -> None:
        with self._guard:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            held, self._held = self._held, None
        if held is not None:
            held.close()


_block = _Block()


def _exclusive(item: pytest.Item | None) -> bool:
    return item is not None and item.get_closest_marker("exclusive") is not None


def _share(folder: Path, heavy: bool) -> contextlib.AbstractContextManager[None]:
    """The shared lock, or, while an exclusive block holds the lock and this test is not heavy,
    a companion slot; waits until one of them is free."""
    while True:
        with _flock(folder / "exclusive.turnstile", fcntl.LOCK_EX):
            shared = _try_flock(folder / "exclusive.lock", fcntl.LOCK_SH)
        if shared is not None:
            return shared
        if not heavy:
            for slot in range(COMPANIONS):
                companion = _try_flock(folder / f"exclusive.companion-{slot}", fcntl.LOCK_EX)
                if companion is not None:
                    return companion
        time.sleep(WAIT_S)


@pytest.fixture(autouse=True)
def _exclusive_tests_run_nearly_alone(request: pytest.FixtureRequest,
                                      _lock_files: Path | None) -> Iterator[None]:
    if _lock_files is None:
        yield
        return
    if _exclusive(request.node):
        _block.take(_lock_files)
        yield
    else:
        with _share(_lock_files, request.node.get_closest_marker("heavy") is not None):
            yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    try:
        return (yield)
    finally:
        if _exclusive(nextitem):
            _block.keep_for_a_while()  # the next one takes it over, if it starts soon
        else:
            _block.give_back()  # the block ends: the others go on


# --- PostgreSQL for the demo application (upstream/) ----------------------------------------


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield Postgres.external(os.environ["TEST_DATABASE_URL"])
        return
    # A short path: the server's Unix socket lives in its data folder (107-byte limit).
    with tempfile.TemporaryDirectory(prefix="pgt-") as folder:
        pg = start_postgres(Path(folder))
        yield pg
        pg.stop()


@pytest.fixture(scope="session")
def app_template(postgres: Postgres) -> Iterator[str]:
    name = migrated_template(postgres)
    yield name
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def seeded_template(postgres: Postgres, app_template: str) -> Iterator[str]:
    """The head schema with the demo data (`upstream.seed`), to clone per test."""
    import asyncio

    from upstream.seed import seed
    name = postgres.create_database(template=app_template)
    asyncio.run(seed(postgres.url(name)))
    yield name
    postgres.drop_database(name)


@pytest.fixture
def seeded_database_url(postgres: Postgres, seeded_template: str) -> Iterator[str]:
    """A fresh database with the demo data, dropped after the test."""
    name = postgres.create_database(template=seeded_template)
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def database_url(postgres: Postgres, app_template: str) -> Iterator[str]:
    """A fresh database at the head revision, dropped after the test."""
    name = postgres.create_database(template=app_template)
    yield postgres.url(name)
    postgres.drop_database(name)
