"""Rate-limit headers tell a client the truth: waiting what they say is enough (issue 12.5)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ratelimit.algorithms import evaluate
from gateway.ratelimit.headers import rate_limit_headers, retry_after
from gateway.settings.ratelimit import RateLimitPolicy

ALGOS = ["fixed_window", "sliding_window", "token_bucket"]


def headers_of(policy: RateLimitPolicy, outcome) -> dict[str, str]:
    return dict(rate_limit_headers(f'"{policy.name}"', [(policy, outcome)]))


def t_of(headers: dict[str, str]) -> int:
    return int(headers["RateLimit"].rpartition(";t=")[2])


@settings(max_examples=300, deadline=None)
@given(algorithm=st.sampled_from(ALGOS), limit=st.integers(1, 8),
       period_s=st.integers(1, 120), burst_extra=st.integers(0, 3),
       gaps_ms=st.lists(st.integers(0, 90_000), min_size=1, max_size=40))
def test_waiting_what_the_headers_say_is_enough(algorithm: str, limit: int, period_s: int,
                                                burst_extra: int, gaps_ms: list[int]) -> None:
    policy = RateLimitPolicy(name="p", limit=limit, period_ms=period_s * 1000,
                             algorithm=algorithm,
                             burst=limit + burst_extra if algorithm == "token_bucket" else None)
    state, now = None, 1_700_000_000_000
    for gap in gaps_ms:
        now += gap
        outcome = evaluate(policy, state, now)
        headers = headers_of(policy, outcome)
        if outcome.allowed:
            state = outcome.state
            # t seconds later the whole quota is there again
            later = evaluate(policy, state, now + t_of(headers) * 1000)
            assert later.allowed and later.remaining == policy.capacity - 1, headers
        else:
            wait = retry_after([(policy, outcome)])
            assert t_of(headers) == int(headers["X-RateLimit-Reset"]) == wait
            assert evaluate(policy, state, now + wait * 1000).allowed, headers


def test_a_refusal_names_the_limit_that_admits_last() -> None:
    short = RateLimitPolicy(name="short", limit=1, period_ms=10_000, algorithm="fixed_window")
    long = RateLimitPolicy(name="long", limit=1, period_ms=900_000, algorithm="fixed_window")
    now = 1_700_000_000_000 - 1_700_000_000_000 % 900_000  # both windows start now
    first = [(p, evaluate(p, None, now)) for p in (short, long)]
    second = [(p, evaluate(p, o.state, now + 1000)) for p, o in first]
    headers = dict(rate_limit_headers('"short", "long"', second))
    assert headers["RateLimit"] == '"long";r=0;t=899'
    assert headers["X-RateLimit-Reset"] == "899" == str(retry_after(second))
