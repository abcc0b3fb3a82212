"""Fetching a JWKS from the URL of `jwt.jwks`: at start, again every `jwt.jwks_refresh`, and
sooner (at most every RETRY_S seconds) while the last fetch failed or a token named a key the
set lacks (the identity provider rotated its keys). Until the first fetch succeeds, tokens are
refused as "signing keys not fetched yet" (limits count the client IP instead; `require_jwt`
routes answer 401). A failed fetch keeps the keys already known. A fetch under way never
holds up a stopping gateway (its thread is not waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from typing import Any

from gateway.identity import Verifier

log = logging.getLogger("gateway.jwks")
RETRY_S = 30.0
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 1024 * 1024  # a key set is a few KiB; anything this large is not one


@functools.cache
def _opener() -> Any:
    """The opener for key fetches, built at the first one. urllib.request (http.client, email,
    ...) is imported then, not with the gateway: only a policy whose `jwt.jwks` is a URL ever
    fetches, and the import costs every start. No proxy from the environment and no
    redirects: the keys come from the URL the policy names. (urllib, in a thread: a fetch
    every few minutes needs no HTTP client on the event loop.)"""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs) -> None:
            return None  # a 3xx is answered as a failed fetch, never followed

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())


def _get(url: str) -> str:
    """The body of a 200 answer to GET `url`; raises OSError or ValueError otherwise."""
    import urllib.error  # (loaded with urllib.request by _opener: a lookup here)

    try:
        with _opener().open(url, timeout=FETCH_TIMEOUT_S) as response:
            body = response.read(MAX_JWKS_BYTES + 1)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise ValueError(f"status {exc.code}") from None
    if len(body) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    return body.decode()


async def refresh_jwks(verifier: Verifier, refresh: float) -> None:
    """Keep `verifier`'s keys fresh until cancelled."""
    assert verifier.url is not None
    while True:
        ok = await _fetch(verifier)
        step = min(RETRY_S, refresh)
        waited = 0.0
        while waited < refresh:
            await asyncio.sleep(step)
            waited += step
            if not ok or verifier.unknown_kid:
                break


async def _fetch(verifier: Verifier) -> bool:
    problem = await _fetch_in_daemon_thread(verifier)
    if problem is not None:
        log.warning("%s; keeping the keys known so far", problem)
        return False
    return True


async def _fetch_in_daemon_thread(verifier: Verifier) -> str | None:
    """`fetch_once(verifier)` on a thread of its own that the process does not wait for at exit
    (`asyncio.to_thread`'s would be joined: a provider answering slowly, a byte at a time
    within each read's timeout, could hold a stopping gateway for as long). The thread only
    reads the keys; cancelled, the fetch's result is dropped."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str | None] = loop.create_future()

    def settle(result: str | None, error: BaseException | None) -> None:
        if done.done():
            return  # cancelled meanwhile: the gateway no longer waits for it
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        result, error = None, None
        try:
            result = fetch_once(verifier)
        except BaseException as exc:  # handed to the awaiting task, not lost in the thread
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="jwks-fetch", daemon=True).start()
    return await done


def fetch_once(verifier: Verifier) -> str | None:
    """Fetch the keys now (blocking; `gateway explain` calls it directly): None, or why not."""
    assert verifier.url is not None
    try:
        verifier.load_jwks(_get(verifier.url))
    except (OSError, ValueError) as exc:
        return f"JWKS {verifier.url} not fetched: {exc}"
    return None
