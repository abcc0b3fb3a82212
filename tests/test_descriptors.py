"""The kernel's descriptor table is sized before serving (gateway/descriptors.py): a crowd of
connections opening never grows it (each doubling stops the event loop for an RCU grace
period), and a reload that allows more connections grows it then, not while they open."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_policy
from gateway.descriptors import SPARE_DESCRIPTORS, descriptors_needed
from tests.support.load import Held, raise_fd_limit
from tests.support.policy import write_policy
from tests.support.processes import wait_until

ROOT = Path(__file__).resolve().parent.parent


def table_size(pid: int | str) -> int:
    """The descriptor table's size now (FDSize in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("FDSize:")[1].split()[0])


def test_what_one_worker_may_hold_counts_clients_every_pool_and_websockets(
        tmp_path: Path) -> None:
    path = write_policy(tmp_path, """\
version: 1
server:
  listen: 127.0.0.1:8080
  limits: {max_connections: 3000}
upstream: {url: "http://127.0.0.1:9", max_connections: 100, max_websockets: 10}
upstreams:
  orders: {url: "http://127.0.0.1:10", max_connections: 50, max_websockets: 5}
routes:
  - {name: all, match: {path_prefix: /}}
""", "p.yaml")
    policy = load_policy(path, {}).policy
    assert descriptors_needed(policy) == 3000 + (100 + 10) + (50 + 5) + SPARE_DESCRIPTORS


def _run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return out.split()


RESERVE = """\
import os, resource
from gateway.descriptors import reserve_descriptor_table
def size():
    return open('/proc/self/status').read().split('FDSize:')[1].split()[0]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit} or soft, hard))
r, w = os.pipe()
before = sorted(os.listdir('/proc/self/fd'))
print(size())
reserve_descriptor_table({count})
print(size(), sorted(os.listdir('/proc/self/fd')) == before)
os.write(w, b'k')
print(os.read(r, 1).decode())
"""


@pytest.mark.integration  # a fresh process: its table, not the test worker's
def test_reserving_grows_the_table_and_leaves_open_descriptors_alone() -> None:
    if raise_fd_limit(5000) < 5000:
        pytest.skip("this machine's open-file limit is under 5,000")
    before, after, unchanged, through_pipe = _run(RESERVE.format(count=5000, limit=0))
    assert int(before) < 5000 <= int(after)
    assert unchanged == "True"  # nothing left open, nothing closed
    assert through_pipe == "k"  # the descriptors open before still work


@pytest.mark.integration
def test_reserving_stops_at_the_open_file_limit() -> None:
    # asked for more than the limit allows: as much as it allows, not nothing
    before, after, unchanged, through_pipe = _run(RESERVE.format(count=100_000, limit=1024))
    assert int(before) < 1024 <= int(after) < 100_000
    assert (unchanged, through_pipe) == ("True", "k")


@pytest.mark.integration
def test_a_crowd_opening_does_not_grow_the_gateways_table_and_a_reload_grows_it(
        gateway_factory, upstream) -> None:
    crowd = 1200
    raise_fd_limit(crowd + 200)
    gw = gateway_factory(upstream.url, server_extra="limits: {max_connections: 3000}")
    at_start = table_size(gw.proc.pid)
    # 3,000 clients + the default pool (512) and WebSockets (256) + spare
    assert at_start >= 3000 + 512 + 256 + SPARE_DESCRIPTORS

    async def open_crowd() -> tuple[int, int]:
        held = Held()
        try:
            await held.open(gw.port, crowd, batch=200)
            assert not held.failed, held.failed
            return len(held.conns), table_size(gw.proc.pid)
        finally:
            held.close()

    opened, with_crowd = asyncio.run(open_crowd())
    assert opened == crowd
    assert with_crowd == at_start  # never grew while they opened

    gw.config.write_text(gw.config.read_text().replace("max_connections: 3000",
                                                       "max_connections: 20000"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "policy reloaded (SIGHUP)" in gw.log_text())
    assert table_size(gw.proc.pid) >= 20000 + 512 + 256 + SPARE_DESCRIPTORS
