"""Security response headers at request time: one pure `apply` of a `HeadersPolicy`
(gateway/settings/headers.py, where each header's validator runs when the policy loads).

A headers policy has `set` (added or overwritten), `set_if_missing` (the upstream's value wins)
and `remove` (e.g. Server, X-Powered-By). `Strict-Transport-Security` is sent only on responses
to requests that reached the gateway over HTTPS (directly, or per X-Forwarded-Proto from a
trusted proxy): browsers ignore it over plain HTTP, and sending it there tells an attacker on the
network nothing useful while hiding misconfigurations.
"""

from __future__ import annotations

from multidict import CIMultiDict

from gateway.settings.headers import HeadersPolicy


def apply(policy: HeadersPolicy, headers: CIMultiDict[str], https: bool) -> None:
    """Rewrite response `headers` in place."""
    for name in policy.remove:
        headers.popall(name, None)
    for name, value in policy.set:
        headers[name] = value
    for name, value in policy.set_if_missing:
        headers.setdefault(name, value)
    if https and policy.hsts is not None:
        headers["Strict-Transport-Security"] = policy.hsts
