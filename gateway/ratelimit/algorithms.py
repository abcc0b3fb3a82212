"""Rate-limit arithmetic, pure and in integer milliseconds.

The Redis backend runs the same arithmetic in Lua (check.lua); both must give the same answers
for the same state and time, which the tests check. Integers keep them identical.

State is three integers per limit and key:
- fixed_window:   (window index, count in it, 0)
- sliding_window: (window index, count in it, count in the window before); the rolling count is
  estimated as `previous * (time left in this window / period) + current` (the two-window
  weighting used by Envoy and Cloudflare), so memory is constant per key. In a burst from a
  fresh start it admits exactly `limit`.
- token_bucket:   (tokens * period, time of the last update, 0): refills `limit` tokens per
  `period`, holds at most `burst` (default `limit`).

A request that is refused consumes nothing.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.settings.ratelimit import RateLimitPolicy

State = tuple[int, int, int]
# one letter per algorithm: what evaluate_code and the Lua script switch on; also in storage keys
CODES = {"fixed_window": "f", "sliding_window": "s", "token_bucket": "t"}


class Outcome(NamedTuple):  # a tuple: made for every limit of every request, cheaply
    allowed: bool
    remaining: int  # requests left after this one (0 when refused)
    reset_ms: int  # until the quota is whole again (fixed: the window's end; sliding: the
    #                next window's end, once this window's count has decayed; token bucket:
    #                until full)
    retry_ms: int  # until a request could be admitted; 0 when allowed
    state: State  # the state to store if the request is admitted


def _ceildiv(a: int, b: int) -> int:
    return -(-a // b)


def evaluate(policy: RateLimitPolicy, state: State | None, now_ms: int) -> Outcome:
    return evaluate_code(CODES[policy.algorithm], policy.limit, policy.period_ms,
                         policy.capacity, state, now_ms)


def evaluate_code(algo: str, limit: int, period: int, capacity: int, state: State | None,
                  now: int) -> Outcome:
    a, b, c = state if state is not None else (None, None, None)
    if algo == "f":
        window = now // period
        count = b if a == window else 0
        allowed = count < limit
        if allowed:
            count += 1
        reset = (window + 1) * period - now
        return Outcome(allowed, limit - count if allowed else 0, reset,
                       0 if allowed else reset, (window, count, 0))
    if algo == "s":
        window = now // period
        if a == window:
            curr, prev = b, c
        elif a is not None and a == window - 1:
            curr, prev = 0, b
        else:
            curr, prev = 0, 0
        weight = period - (now - window * period)  # time left in this window
        allowed = prev * weight + (curr + 1) * period <= limit * period
        if allowed:
            curr += 1
            remaining = max(0, (limit * period - prev * weight - curr * period) // period)
            retry = 0
        else:
            remaining = 0
            retry = _sliding_retry(limit, period, curr, prev, weight)
        # the quota is whole again once this window's count has decayed: the next one's end
        reset = weight + period if curr else weight
        return Outcome(allowed, remaining, reset, retry, (window, curr, prev))
    if algo == "t":
        cap = capacity * period
        tokens = cap if a is None else min(cap, a + max(0, now - b) * limit)
        allowed = tokens >= period
        if allowed:
            tokens -= period
        reset = _ceildiv(cap - tokens, limit)
        retry = 0 if allowed else _ceildiv(period - tokens, limit)
        return Outcome(allowed, tokens // period, reset, retry, (tokens, now, 0))
    raise ValueError(f"unknown algorithm code {algo!r}")


def _sliding_retry(limit: int, period: int, curr: int, prev: int, weight: int) -> int:
    """Time until `prev * weight' + (curr + 1) * period <= limit * period` holds."""
    if curr + 1 <= limit and prev > 0:
        # still in this window: the previous window's share decays as time passes
        wait = _ceildiv(prev * weight + (curr + 1 - limit) * period, prev)
        if wait < weight:
            return wait
    # next window: this window's count becomes the decaying share
    extra = _ceildiv((curr - limit + 1) * period, curr) if curr > limit - 1 else 0
    return weight + extra
