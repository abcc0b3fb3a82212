"""Reload under load: traffic keeps running while the policy file is rewritten 20 times, valid
and invalid alternately. No request may fail for a reason the policy did not give, and every
request is answered wholly under the old or wholly under the new policy.

The two valid policies differ in two coupled ways, so a request that saw half of each would
show: A routes /a/ to upstream U1 and has no /b/ route; B routes /b/ to U2 and has no /a/
route. The echo upstream reports the Host it received, which the gateway sets to the
upstream's authority, so each 200 says which upstream answered it. /a/x answered by U2 or
/b/x answered by U1 is a mix.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import threading
import time
from dataclasses import dataclass

import aiohttp
import pytest

from tests.support.metrics import samples
from tests.support.processes import Gateway, start_gateway, start_upstream, stop, wait_until

pytestmark = pytest.mark.integration  # starts processes (see tests/conftest.py)

FAST_WATCH = "watch_interval: 100ms"
ROUTE_A = "  - name: a\n    match: {path_prefix: /a/}"
ROUTE_B = "  - name: b\n    match: {path_prefix: /b/}"
REWRITES = 20
WORKERS = 8
MAX_SECONDS = 60.0
MAX_REQUESTS = 200_000  # ~4k/s here: the time cap binds first
BETWEEN_REWRITES = 40  # requests that must complete in every state, at least


@dataclass(frozen=True, slots=True)
class Outcome:
    path: str
    status: int | None
    host: str | None  # the Host the echo upstream received (200s only)
    problem: bool  # the gateway's own application/problem+json answer
    error: str | None  # transport failure


class Load:
    """WORKERS concurrent clients on their own event loop thread, alternating /a/x and /b/x;
    half on keep-alive connections (which outlive reloads), half on a new connection each."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.results: list[Outcome] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def count(self) -> int:
        return len(self.results)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "load generator did not stop"

    async def _main(self) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as keepalive, aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)
        ) as fresh:
            await asyncio.gather(*(
                self._worker(keepalive if i % 2 else fresh, i, deadline) for i in range(WORKERS)))

    async def _worker(self, session: aiohttp.ClientSession, i: int, deadline: float) -> None:
        n = i
        while (not self.stopping.is_set() and time.monotonic() < deadline
               and len(self.results) < MAX_REQUESTS):
            path = ("/a/x", "/b/x")[n % 2]
            n += 1
            self.results.append(await self._one(session, path))

    async def _one(self, session: aiohttp.ClientSession, path: str) -> Outcome:
        try:
            async with session.get(self.base + path) as resp:
                body = await resp.read()
                ctype = resp.headers.get("Content-Type", "")
                host = None
                if resp.status == 200:
                    seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
                    host = seen.get("host")
                return Outcome(path, resp.status, host,
                               ctype.startswith("application/problem+json"), None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, KeyError) as exc:
            return Outcome(path, None, None, False, repr(exc))


def reload_counts(gw: Gateway) -> dict[str, int]:
    found = {dict(labels)["result"]: int(count) for labels, count
             in samples(gw, "gateway_config_reloads_total").items()}
    assert {"success", "failure"} <= found.keys(), f"reload counters missing: {found}"
    return {result: found[result] for result in ("success", "failure")}


@pytest.mark.slow
def test_rewrites_under_load_fail_no_request_and_never_mix_policies(tmp_path) -> None:
    u1, u2 = start_upstream(), start_upstream()
    host1, host2 = f"127.0.0.1:{u1.port}", f"127.0.0.1:{u2.port}"
    gw: Gateway | None = None
    load: Load | None = None
    try:
        gw = start_gateway(tmp_path, u1.url, routes=ROUTE_A, server_extra=FAST_WATCH)
        policy_a = gw.config.read_text()
        policy_b = policy_a.replace(f"url: {u1.url}\n", f"url: {u2.url}\n").replace(
            ROUTE_A, ROUTE_B)
        assert policy_b.count(u2.url) == 1 and ROUTE_B in policy_b and u1.url not in policy_b
        valid = {"A": policy_a, "B": policy_b}
        invalid = {  # the running policy made invalid: an unknown key, or a bad duration
            "A": policy_a + "bogus: 1\n",
            "B": policy_b.replace(FAST_WATCH, "watch_interval: soon"),
        }
        assert invalid["B"] != policy_b
        # the gateway starts on A: invalid, B, invalid, A, invalid, B, ...
        sequence: list[tuple[str, str, str]] = []  # (text, expected result, running after)
        running = "A"
        for i in range(REWRITES):
            if i % 2 == 0:
                sequence.append((invalid[running], "failure", running))
            else:
                running = "B" if running == "A" else "A"
                sequence.append((valid[running], "success", running))
        expected = collections.Counter(result for _, result, _ in sequence)
        assert expected == {"success": REWRITES // 2, "failure": REWRITES // 2}
        assert all(a[0] != b[0] for a, b in itertools.pairwise(sequence))

        # what the policy in force may answer: its route to its upstream, 404 for the other
        served = {"A": ("/a/x", host1), "B": ("/b/x", host2)}

        load = Load(gw.port)
        load.start()
        started = time.monotonic()
        wait_until(lambda: load.count() >= BETWEEN_REWRITES, timeout=15)
        done = collections.Counter({"success": 0, "failure": 0})
        for text, result, running in sequence:
            gw.config.write_text(text)
            done[result] += 1
            wait_until(lambda: reload_counts(gw) == done, timeout=10)
            mark = load.count()
            path, host = served[running]
            # the state serves traffic: more requests, and a 200 under the policy in force
            wait_until(lambda: load.count() >= mark + BETWEEN_REWRITES and any(  # noqa: B023
                o.path == path and o.host == host for o in load.results[mark:]),  # noqa: B023
                timeout=10)
        load.stop()
        elapsed = time.monotonic() - started

        results = load.results
        kinds = collections.Counter()
        for o in results:
            if o.error is not None:
                kinds["transport error"] += 1
            elif o.status == 200 and (o.path, o.host) in served.values():
                kinds[f"{o.path} 200 from {'U1' if o.host == host1 else 'U2'}"] += 1
            elif o.status == 404 and o.problem and o.path in ("/a/x", "/b/x"):
                kinds[f"{o.path} 404"] += 1
            elif o.status == 200 and o.host in (host1, host2):
                kinds[f"MIX: {o.path} 200 from {'U1' if o.host == host1 else 'U2'}"] += 1
            else:
                kinds[f"unexpected: {o.path} {o.status} host={o.host} problem={o.problem}"] += 1
        print(f"\n{len(results)} requests in {elapsed:.1f}s: {dict(kinds)}")
        bad = [o for o in results if o.error is not None or o.status not in (200, 404)]
        assert not bad, f"{len(bad)} failed requests, first: {bad[:5]}; {dict(kinds)}"
        allowed = {"/a/x 200 from U1", "/a/x 404", "/b/x 200 from U2", "/b/x 404"}
        assert set(kinds) <= allowed, dict(kinds)
        assert kinds["/a/x 200 from U1"] and kinds["/b/x 200 from U2"], dict(kinds)
        assert len(results) < MAX_REQUESTS, "the load hit its cap before the rewrites ended"

        assert reload_counts(gw) == expected
        log = gw.log_text()
        assert log.count("policy reloaded (file changed)") == expected["success"]
        assert log.count("reload (file changed) failed") == expected["failure"]
        assert "unknown key 'bogus'" in log and "watch_interval" in log
        assert "Traceback" not in log, log
        assert gw.proc.poll() is None, "the gateway exited"
    finally:
        if load is not None:
            load.stopping.set()
            load.thread.join(timeout=20)
        if gw is not None:
            stop(gw.proc)
        stop(u1.proc)
        stop(u2.proc)
