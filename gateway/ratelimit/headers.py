"""Rate-limit response headers: IETF draft-ietf-httpapi-ratelimit-headers-11, and the legacy
X-RateLimit-* trio for the same (most constrained) limit.

    RateLimit-Policy: "api";q=100;w=60, "login";q=5;w=900
    RateLimit: "login";r=2;t=840
    X-RateLimit-Limit: 5 / X-RateLimit-Remaining: 2 / X-RateLimit-Reset: 840
    Retry-After: 840                       (429 only)

`w`, `t`, X-RateLimit-Reset and Retry-After are whole seconds, rounded up; Reset is a delta, not
a timestamp. On an admitted request the headers describe the most constrained limit (the
fewest requests remaining; ties: the one that resets last), and `t` is the time until its
quota is whole again. On a refusal they describe the violated limit that admits last, and `t`,
X-RateLimit-Reset and Retry-After are one number: a client that waits that long is admitted.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.ratelimit.algorithms import Outcome
from gateway.settings.ratelimit import RateLimitPolicy

Result = tuple[RateLimitPolicy, Outcome]


def _seconds(ms: int) -> int:
    return max(0, -(-ms // 1000))


def policy_header(policies: Sequence[RateLimitPolicy]) -> str:
    """The RateLimit-Policy value; fixed per route, so built once at load time."""
    return ", ".join(f'"{p.name}";q={p.limit};w={max(1, _seconds(p.period_ms))}'
                     for p in policies)


def most_constrained(results: Sequence[Result]) -> Result:
    return min(results, key=lambda r: (r[1].remaining, -r[1].reset_ms))


def rate_limit_headers(policy_value: str, results: Sequence[Result]) -> list[tuple[str, str]]:
    refused = [r for r in results if r[0].enforced and not r[1].allowed]
    if refused:
        policy, outcome = max(refused, key=lambda r: r[1].retry_ms)
        reset = retry_after(results)
    else:
        policy, outcome = most_constrained(results)
        reset = _seconds(outcome.reset_ms)
    return [
        ("RateLimit-Policy", policy_value),
        ("RateLimit", f'"{policy.name}";r={outcome.remaining};t={reset}'),
        ("X-RateLimit-Limit", str(policy.limit)),
        ("X-RateLimit-Remaining", str(outcome.remaining)),
        ("X-RateLimit-Reset", str(reset)),
    ]


def retry_after(results: Sequence[Result]) -> int:
    """Seconds until every violated enforced limit admits again (at least 1)."""
    waits = [o.retry_ms for p, o in results if p.enforced and not o.allowed]
    return max(1, _seconds(max(waits, default=1000)))


def violated(results: Sequence[Result], enforced: bool = True) -> list[str]:
    return [p.name for p, o in results if not o.allowed and p.enforced == enforced]
