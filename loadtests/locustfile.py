"""Locust load test: the gateway on its shipped policy in front of the demo API.

`python -m loadtests run SCENARIO` starts the system and runs this file headless; by hand:
`locust -f loadtests/locustfile.py --host http://127.0.0.1:8080` (the gateway must then trust
127.0.0.1: TRUSTED_PROXIES=127.0.0.1/32 with policies/production.yaml).

Every simulated client has an address of its own, sent as X-Forwarded-For (from 198.18.0.0/15,
the range set aside for benchmarks). The gateway believes it because the load generator's
127.0.0.1 is its trusted proxy, so each per-client limit of the policy counts each simulated
client apart, as it counts real clients behind a load balancer.

  ApiClient     (tag api) logs in once with the demo login, then reads and writes campaigns and
                calls, one request a second: under the api limit (100/min) and, for the runs'
                lengths (at most 15 min), under global (1000/h). Anything but 2xx is an error,
                429 included.
  BruteForcer   (tag bruteforce) guesses passwords on the login route, two a second. The
                policy allows LOGIN_LIMIT attempts per LOGIN_WINDOW per client: those reach the
                API (401), every later one must be refused (429). After ADDRESS_SECONDS it
                moves to a fresh address, as an attacker rotating addresses does; each address
                is one episode, all of it checked by the runner.
  HealthProber  (tag health) GET /health twice a second: under the health limit (10/s).
  BurstClient   (tag burst) logs in, then sends a burst of BURST_SIZE concurrent reads, well
                over the api limit, and rests. What is over the limit must be 429 with
                Retry-After; anything else than 200 or 429 is an error.

Expected answers are not errors: a brute-forcer's 401s and 429s and a burst's 429s are marked
successful, the 429s under their own request names ("... [429 expected]") so the report counts
them apart. At the end the process writes LOADTESTS_SUMMARY (JSON): totals, the latencies (see
Tally: what the target is measured on), every brute-force address's answers in order and every
burst's outcome; the runner checks the targets on it.

Set by the runner through the environment: LOADTESTS_USERS ({"ApiClient": 4, ...}: how many of
each class), LOADTESTS_SUMMARY, and the limits read from the policy (LOADTESTS_LOGIN_LIMIT,
LOADTESTS_LOGIN_WINDOW_S, LOADTESTS_API_LIMIT).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import random
import time
import uuid
from collections import Counter
from pathlib import Path

import gevent
from gevent.pool import Pool
from locust import FastHttpUser, between, constant_pacing, events, tag, task

USERNAME = os.environ.get("LOADTESTS_USERNAME", "admin")
PASSWORD = os.environ.get("LOADTESTS_PASSWORD", "admin-password")
LOGIN_LIMIT = int(os.environ.get("LOADTESTS_LOGIN_LIMIT", "5"))
LOGIN_WINDOW_S = float(os.environ.get("LOADTESTS_LOGIN_WINDOW_S", "900"))
API_LIMIT = int(os.environ.get("LOADTESTS_API_LIMIT", "100"))
BURST_SIZE = int(os.environ.get("LOADTESTS_BURST_SIZE", str(API_LIMIT + 50)))
# A brute-forcer keeps an address for a random time in this range: a quarter to a half of the
# time the policy's sliding window is sure to refuse after LOGIN_LIMIT attempts (WINDOW / LIMIT,
# wherever its fixed boundaries fall), so every episode is checkable and the brute-forcers'
# admitted guesses come at different times (45 to 90 s with the shipped policy)
ADDRESS_SECONDS = (LOGIN_WINDOW_S / LOGIN_LIMIT / 4, LOGIN_WINDOW_S / LOGIN_LIMIT / 2)
EXPECTED_429 = " [429 expected]"
LOGIN = "/api/auth/login"

_BENCHMARK_NET = ipaddress.IPv4Network("198.18.0.0/15")
# from a random start, so that a second run against the same gateway (and Redis) meets fresh
# counters
_addresses = itertools.count(random.randrange(1, _BENCHMARK_NET.num_addresses))


def next_address() -> str:
    """A client address no other simulated client has had in this run."""
    offset = next(_addresses) % (_BENCHMARK_NET.num_addresses - 2) + 1
    return str(_BENCHMARK_NET[offset])


class Tally:
    """What the runner checks beyond locust's own statistics, gathered in this process.

    The latency target is measured on what the well-behaved clients (API clients, health
    probers) get once every client has started: spawned and logged in, and each brute-forcer
    past its first address's allowed guesses. Logins are left out (their argon2 password check
    is slow on purpose; their figures are reported apart), and so is the abusive clients' own
    latency; the load they make is in the figures of the others, and the whole run's p95 of
    every request is reported too.
    """

    def __init__(self) -> None:
        self.measured_ms: list[float] = []  # the well-behaved clients' in steady state
        self.answered_ms: list[float] = []  # every request but the expected 429s, whole run
        self.login_ms: list[float] = []
        self.expected_429 = 0
        self.unexpected_429 = 0
        self.statuses: Counter[str] = Counter()  # "401", "429", "0" (no answer)...
        self.brute: dict[str, list[dict]] = {}  # address -> its login attempts, in order
        self.bursts: list[dict] = []
        self.first_request: float | None = None
        self.users_expected: int | None = None  # known once locust has spawned them all
        self.users_started = 0
        self.steady_at: float | None = None

    def user_started(self) -> None:
        self.users_started += 1
        self._steady()

    def all_spawned(self, user_count: int) -> None:
        self.users_expected = user_count
        self._steady()

    def _steady(self) -> None:
        if (self.steady_at is None and self.users_expected is not None
                and self.users_started >= self.users_expected):
            self.steady_at = time.time()

    def count(self, name: str, role: str, start: float, ms: float, status: int) -> None:
        self.first_request = start if self.first_request is None else self.first_request
        self.statuses[str(status)] += 1
        if name.endswith(EXPECTED_429):
            self.expected_429 += 1
            return
        self.unexpected_429 += status == 429
        self.answered_ms.append(ms)
        if name.startswith(f"POST {LOGIN}"):
            self.login_ms.append(ms)
        elif role == "client" and self.steady_at is not None and start >= self.steady_at:
            self.measured_ms.append(ms)

    def summary(self, environment) -> dict:
        total = environment.stats.total
        measured, answered = sorted(self.measured_ms), sorted(self.answered_ms)
        logins = sorted(self.login_ms)
        steady_after = (None if self.steady_at is None or self.first_request is None
                        else round(max(0.0, self.steady_at - self.first_request), 1))
        return {
            "requests": total.num_requests,
            "failures": total.num_failures,
            "expected_429": self.expected_429,
            "unexpected_429": self.unexpected_429,
            "statuses": dict(self.statuses),
            "measured_requests": len(measured),
            "steady_after_s": steady_after,
            "p50_ms": _percentile(measured, 0.50),
            "p95_ms": _percentile(measured, 0.95),
            "p99_ms": _percentile(measured, 0.99),
            "p95_ms_whole_run": _percentile(answered, 0.95),
            "login_requests": len(logins),
            "login_p50_ms": _percentile(logins, 0.50),
            "login_p95_ms": _percentile(logins, 0.95),
            "errors": [{"method": e.method, "name": e.name, "error": str(e.error),
                        "occurrences": e.occurrences}
                       for e in environment.stats.errors.values()],
            "login_limit": LOGIN_LIMIT,
            "login_window_s": LOGIN_WINDOW_S,
            "api_limit": API_LIMIT,
            "bruteforce": self.brute,
            "bursts": self.bursts,
        }


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


TALLY = Tally()


@events.request.add_listener
def _count(name: str, response_time: float, start_time: float, context: dict,
           response=None, **_kwargs) -> None:
    TALLY.count(name, context.get("role", "client"), start_time, response_time,
                getattr(response, "status_code", 0) or 0)


@events.spawning_complete.add_listener
def _spawned(user_count: int, **_kwargs) -> None:
    TALLY.all_spawned(user_count)


@events.quitting.add_listener
def _write_summary(environment, **_kwargs) -> None:
    path = os.environ.get("LOADTESTS_SUMMARY")
    if path:
        Path(path).write_text(json.dumps(TALLY.summary(environment)))


def _expect_429(response) -> bool:
    """A 429 as the policy answers it: marked successful, counted under its own name."""
    response.request_meta["name"] += EXPECTED_429
    if "Retry-After" not in response.headers:
        response.failure("429 without Retry-After")
        return False
    response.success()
    return True


def _violated(response) -> list[str]:
    try:
        return list(response.json().get("violated-policies", []))
    except (ValueError, AttributeError):
        return []


class Client(FastHttpUser):
    """A client with an address of its own (see the module's docstring)."""

    abstract = True
    network_timeout = 30.0
    connection_timeout = 10.0
    role = "client"  # or "abuser": its own latency is not measured against the target

    def on_start(self) -> None:
        self.address = next_address()
        self.token: str | None = None
        self.prepare()
        if self.started_by_prepare:
            TALLY.user_started()

    started_by_prepare = True  # False: the client says itself when its start-up is over

    def prepare(self) -> None:
        """What the client does once before its tasks (a login)."""

    def context(self) -> dict:
        return {"role": self.role}

    def headers(self) -> dict[str, str]:
        headers = {"X-Forwarded-For": self.address}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def login(self) -> None:
        with self.client.post(LOGIN, json={"username": USERNAME, "password": PASSWORD},
                              headers=self.headers(), name=f"POST {LOGIN}",
                              catch_response=True) as response:
            if response.status_code == 200:
                self.token = response.json()["access_token"]


class ApiClient(Client):
    """An operator's application: one login, then campaigns and calls, one request a second."""

    wait_time = constant_pacing(1.0)

    def prepare(self) -> None:
        self.campaigns: list[int] = []  # created by this client: its own to change and delete
        self.calls: dict[int, tuple[int, str]] = {}  # its calls: id -> (campaign, status)
        self.login()

    def _json(self, method: str, path: str, name: str, body: dict | None = None):
        if not self.token:  # its login failed (a timeout, say): this turn logs in again
            self.login()
            return None
        with self.client.request(method, path, json=body, headers=self.headers(), name=name,
                                 catch_response=True) as response:
            if response.status_code >= 400 or response.status_code == 0:
                return None  # counted as an error by locust
            if response.status_code == 204:
                return {}
            try:
                return response.json()
            except ValueError:
                response.failure("not JSON")
                return None

    @tag("api")
    @task(4)
    def list_campaigns(self) -> None:
        self._json("GET", "/api/campaigns?limit=20", "GET /api/campaigns")

    @tag("api")
    @task(3)
    def read_campaign(self) -> None:
        if not self.campaigns:
            return self.create_campaign()
        cid = random.choice(self.campaigns)
        self._json("GET", f"/api/campaigns/{cid}", "GET /api/campaigns/{id}")

    @tag("api")
    @task(1)
    def create_campaign(self) -> None:
        created = self._json("POST", "/api/campaigns", "POST /api/campaigns",
                             {"name": f"load {uuid.uuid4().hex[:12]}", "status": "active"})
        if created:
            self.campaigns.append(created["id"])

    @tag("api")
    @task(1)
    def update_campaign(self) -> None:
        if not self.campaigns:
            return self.create_campaign()
        cid = random.choice(self.campaigns)
        self._json("PATCH", f"/api/campaigns/{cid}", "PATCH /api/campaigns/{id}",
                   {"status": random.choice(["active", "paused"])})

    @tag("api")
    @task(2)
    def add_call(self) -> None:
        if not self.campaigns:
            return self.create_campaign()
        cid = random.choice(self.campaigns)
        phone = "+1555" + "".join(random.choices("0123456789", k=7))
        call = self._json("POST", f"/api/campaigns/{cid}/calls", "POST /api/campaigns/{id}/calls",
                          {"phone_number": phone})
        if call:
            self.calls[call["id"]] = (cid, call["status"])

    @tag("api")
    @task(2)
    def list_calls(self) -> None:
        query = f"?campaign_id={random.choice(self.campaigns)}" if self.campaigns else ""
        self._json("GET", f"/api/calls{query}", "GET /api/calls")

    @tag("api")
    @task(2)
    def advance_call(self) -> None:
        """queued -> ringing -> in_progress -> completed, one step per request."""
        nexts = {"queued": "ringing", "ringing": "in_progress", "in_progress": "completed"}
        open_calls = [call for call, (_, status) in self.calls.items() if status in nexts]
        if not open_calls:
            return self.add_call()
        call = random.choice(open_calls)
        campaign, status = self.calls[call]
        updated = self._json("PATCH", f"/api/calls/{call}", "PATCH /api/calls/{id}",
                             {"status": nexts[status]})
        if updated:
            if updated["status"] == "completed":
                del self.calls[call]
            else:
                self.calls[call] = (campaign, updated["status"])

    @tag("api")
    @task(1)
    def delete_campaign(self) -> None:
        if len(self.campaigns) < 3:
            return self.list_campaigns()
        cid = self.campaigns.pop(0)
        if self._json("DELETE", f"/api/campaigns/{cid}", "DELETE /api/campaigns/{id}") is not None:
            self.calls = {k: v for k, v in self.calls.items() if v[0] != cid}


class BruteForcer(Client):
    """Wrong passwords for the admin account, two a second, from one address for
    ADDRESS_SECONDS (45 to 90 s with the shipped policy), then from the next."""

    wait_time = constant_pacing(0.5)
    role = "abuser"
    started_by_prepare = False  # its start-up: the first address's allowed guesses

    def prepare(self) -> None:
        self.refused_once = False
        self._new_address()

    def _new_address(self) -> None:
        self.address = next_address()
        self.attempts: list[dict] = []
        self.first: float | None = None
        self.keep = random.uniform(*ADDRESS_SECONDS)
        TALLY.brute[self.address] = self.attempts

    @tag("bruteforce")
    @task
    def guess(self) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
        body = {"username": USERNAME, "password": f"guess-{uuid.uuid4().hex[:8]}"}
        with self.client.post(LOGIN, json=body, headers=self.headers(),
                              name=f"POST {LOGIN} (wrong password)",
                              catch_response=True) as response:
            status = response.status_code
            self.attempts.append({
                "t": round(now - self.first, 3), "at": round(time.time(), 3), "status": status,
                "retry_after": response.headers.get("Retry-After") if status == 429 else None,
                "violated": _violated(response) if status == 429 else [],
            })
            if status == 401:
                response.success()
            elif status == 429:
                _expect_429(response)
                if not self.refused_once:
                    self.refused_once = True
                    TALLY.user_started()
            else:
                response.failure(f"a password guess answered {status}")
        if time.monotonic() - self.first >= self.keep:
            self._new_address()


class HealthProber(Client):
    """A load balancer's health check: GET /health twice a second."""

    wait_time = constant_pacing(0.5)

    @tag("health")
    @task
    def probe(self) -> None:
        self.client.get("/health", headers=self.headers(), name="GET /health")


class BurstClient(Client):
    """After its login and a rest of 2 to 4 s, BURST_SIZE reads at once (20 connections), then
    a rest of 20 to 30 s before the next burst."""

    wait_time = between(20, 30)
    concurrency = 20
    role = "abuser"

    def prepare(self) -> None:
        self.login()
        self.first_rest = random.uniform(2, 4)

    @tag("burst")
    @task
    def burst(self) -> None:
        if not self.token:  # its login failed: this turn logs in again
            self.login()
            return
        if self.first_rest:
            gevent.sleep(self.first_rest)
            self.first_rest = 0.0
        statuses: Counter[int] = Counter()
        missing_retry_after = 0

        def read() -> None:
            nonlocal missing_retry_after
            with self.client.get("/api/campaigns?limit=5", headers=self.headers(),
                                 name="GET /api/campaigns (burst)",
                                 catch_response=True) as response:
                statuses[response.status_code] += 1
                if response.status_code == 429 and not _expect_429(response):
                    missing_retry_after += 1

        started, started_at = time.monotonic(), time.time()
        pool = Pool(self.concurrency)
        for _ in range(BURST_SIZE):
            pool.spawn(read)
        pool.join()
        TALLY.bursts.append({
            "address": self.address, "sent": BURST_SIZE, "admitted": statuses.pop(200, 0),
            "refused": statuses.pop(429, 0), "other": {str(k): v for k, v in statuses.items()},
            "missing_retry_after": missing_retry_after,
            "seconds": round(time.monotonic() - started, 3),
            "from": round(started_at, 3), "to": round(time.time(), 3),
        })


def _apply_user_counts() -> None:
    """LOADTESTS_USERS={"ApiClient": 4, ...}: exactly that many of each class."""
    counts = json.loads(os.environ.get("LOADTESTS_USERS", "{}"))
    for cls in (ApiClient, BruteForcer, HealthProber, BurstClient):
        if cls.__name__ in counts:
            cls.fixed_count = int(counts[cls.__name__])


_apply_user_counts()
