"""Micro-benchmark: cost of one Router.match call against route tables of 10, 1,000, 10,000.

Usage:
    python loadtests/bench_routing.py           # full run (well under 30 s)
    python loadtests/bench_routing.py --quick   # a few iterations: checks the script still works

Each table is a deterministic mix of what a policy holds: exact paths, path prefixes, routes
limited to some methods and routes limited to a host (exact or `*.` wildcard). Every table ends
with the same shape of routes, so the request cases below ask the same question of each size:

  last-prefix  a request that only the last route (a prefix route with a host) accepts
  last-exact   a request that only the last exact-path route accepts (methods-limited)
  middle       a request whose route sits in the middle of the table
  miss         a request no route accepts (the gateway's 404)

plus a separate table shape, host-fanout: n tenant routes that all share path_prefix "/" and
differ only by host, asked for the last tenant (multi-tenant routing by Host header).

Figures are ns per Router.match call: the best of several timeit repeats, divided by the loop
count. The ratios compare each size with the 10-route table; the goal is that 1,000 routes cost
within 1.5x of 10 routes per match.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.routing import Router
from gateway.settings.policy import Route, RouteMatch

SIZES = (10, 1_000, 10_000)
GOAL = 1.5
WORDS = (
    "users", "orders", "payments", "inventory", "notifications", "auth", "search", "catalog",
    "reports", "billing-accounts", "shipping", "cart", "reviews", "media", "uploads",
    "recommendations", "profiles", "sessions", "webhooks", "analytics", "export", "pricing",
    "tax", "invoices", "subscriptions", "messages", "feeds", "admin", "audit-log", "tenants",
    "metrics", "files", "checkout", "customer-support", "loyalty", "gift-cards",
)
GET = frozenset({"GET", "HEAD"})
WRITE = frozenset({"POST", "PUT", "PATCH"})


def service(i: int) -> str:
    word = WORDS[i % len(WORDS)]
    return word if i < len(WORDS) else f"{word}-{i // len(WORDS)}"


def make_route(i: int) -> Route:
    """Route number i: one of five shapes, cycling; every path is unique to i."""
    svc = service(i)
    kind = i % 5
    if kind == 0:
        m = RouteMatch(path=f"/{svc}/v1/status")
    elif kind == 1:
        m = RouteMatch(path_prefix=f"/api/{svc}/")
    elif kind == 2:
        m = RouteMatch(path=f"/{svc}/v2/items", methods=GET)
    elif kind == 3:
        m = RouteMatch(path_prefix=f"/{svc}/v2/", methods=WRITE)
    elif i % 10 == 4:
        m = RouteMatch(path_prefix=f"/{svc}/", host=f"{svc}.example.com")
    else:
        m = RouteMatch(path_prefix=f"/{svc}/", host=f"*.{svc}.tenants.example.com")
    return Route(name=f"r{i}-{svc}", match=m)


def build_routes(n: int) -> list[Route]:
    """n routes; the last five are one of each shape, so the table ends the same way."""
    body = [make_route(i) for i in range(n - 5)]
    # Shapes in order 0..4 for the tail, reusing kind-selecting indexes past the body.
    tail_base = n - 5 + (-(n - 5)) % 10  # next multiple of 10 (i % 10 == 4 -> exact host)
    tail = [make_route(tail_base + k) for k in range(5)]
    return body + tail


def request_for(route: Route) -> tuple[str, str, str]:
    """A (method, host, path) that this route accepts, with a realistic path length."""
    m = route.match
    method = sorted(m.methods)[0] if m.methods else "GET"
    host = "gw.example.com"
    if m.host is not None:
        host = "acme" + m.host[1:] if m.host.startswith("*.") else m.host
    if m.path is not None:
        return method, host, m.path
    return method, host, f"{m.path_prefix}items/8e2f4c10/details"


def cases(routes: list[Route]) -> dict[str, tuple[tuple[str, str, str], Route | None]]:
    n = len(routes)
    last_prefix = routes[-1]  # prefix + host
    last_exact = routes[-3]  # exact path + methods
    middle = routes[n // 2]
    return {
        "last-prefix": (request_for(last_prefix), last_prefix),
        "last-exact": (request_for(last_exact), last_exact),
        "middle": (request_for(middle), middle),
        "miss": (("GET", "gw.example.com", "/nothing-here/v9/items/8e2f4c10/details"), None),
    }


def time_match(router: Router, request: tuple[str, str, str], number: int, repeat: int) -> float:
    """Best-of-`repeat` ns per call over `number` calls."""
    match = router.match
    method, host, path = request
    timer = timeit.Timer("match(method, host, path)",
                         globals={"match": match, "method": method, "host": host, "path": path})
    if number <= 0:  # calibrate: about 0.1 s per repeat
        loops, elapsed = 10, 0.0
        while (elapsed := timer.timeit(loops)) < 0.02:
            loops *= 4
        number = max(50, int(loops * 0.1 / elapsed))
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e9


def fanout_routes(n: int) -> list[Route]:
    """n tenants, each its own host, all on the same prefix: one prefix key, n candidates."""
    return [Route(name=f"tenant{i}", match=RouteMatch(path_prefix="/",
                                                      host=f"tenant{i}.example.com"))
            for i in range(n)]


def checked_time(router: Router, request: tuple[str, str, str], expected: Route | None,
                 number: int, repeat: int, what: str) -> float:
    got = router.match(*request)
    if got is not expected:  # the benchmark must measure the match it claims to
        raise SystemExit(f"{what}: matched {got and got.name}, "
                         f"expected {expected and expected.name}")
    return time_match(router, request, number, repeat)


def print_table(title: str, table: dict[int, dict[str, float]], fmt: str) -> None:
    labels = list(table[SIZES[0]])
    print(f"{'routes':>8}  " + "  ".join(f"{label:>12}" for label in labels) + f"   ({title})")
    for n in SIZES:
        print(f"{n:>8}  " + "  ".join(f"{table[n][label]:>12{fmt}}" for label in labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few iterations only (checks the script, figures meaningless)")
    args = parser.parse_args(argv)
    number, repeat = (200, 2) if args.quick else (0, 5)

    print(f"python {platform.python_version()} ({platform.python_implementation()}), "
          f"{platform.machine()}; {'quick' if args.quick else 'full'} run")
    results: dict[int, dict[str, float]] = {}
    for n in SIZES:
        routes = build_routes(n)
        router = Router(routes)
        results[n] = {}
        for label, (request, expected) in cases(routes).items():
            results[n][label] = checked_time(router, request, expected, number, repeat,
                                             f"{n} routes, {label}")
        tenants = fanout_routes(n)
        results[n]["host-fanout"] = checked_time(
            Router(tenants), request_for(tenants[-1]), tenants[-1], number, repeat,
            f"{n} routes, host-fanout")

    print_table("ns/match", results, ".0f")
    base = results[SIZES[0]]
    for n in SIZES[1:]:
        ratios = "  ".join(f"{label}={results[n][label] / base[label]:.2f}x" for label in base)
        print(f"ratio {n}/{SIZES[0]}: {ratios}")
    mixed = [label for label in base if label != "host-fanout"]
    worst = max(results[1_000][label] / base[label] for label in mixed)
    fanout = results[1_000]["host-fanout"] / base["host-fanout"]
    for what, ratio in (("mixed table, worst case", worst), ("host-fanout", fanout)):
        verdict = "met" if ratio <= GOAL else "NOT met"
        print(f"goal 1000 routes within {GOAL}x of 10 routes ({what}): {verdict} "
              f"({ratio:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
