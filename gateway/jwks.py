"""Fetching a JWKS from the URL of `jwt.jwks`: at start, again every `jwt.jwks_refresh`, and
sooner (at most every RETRY_S seconds) while the last fetch failed or a token named a key the
set lacks (the identity provider rotated its keys). Until the first fetch succeeds, tokens are
refused as "signing keys not fetched yet" (limits count the client IP instead; `require_jwt`
routes answer 401). A failed fetch keeps the keys already known.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request

import aiohttp
import jwt

from gateway.identity import Verifier

log = logging.getLogger("gateway.jwks")
RETRY_S = 30.0
FETCH_TIMEOUT_S = 5.0


async def refresh_jwks(verifier: Verifier, refresh: float) -> None:
    """Keep `verifier`'s keys fresh until cancelled."""
    assert verifier.url is not None
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        while True:
            ok = await _fetch(session, verifier)
            step = min(RETRY_S, refresh)
            waited = 0.0
            while waited < refresh:
                await asyncio.sleep(step)
                waited += step
                if not ok or verifier.unknown_kid:
                    break


async def _fetch(session: aiohttp.ClientSession, verifier: Verifier) -> bool:
    url = verifier.url
    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            verifier.load_jwks(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
        log.warning("JWKS %s not fetched (%s); keeping the keys known so far", url, exc)
        return False
    return True


def fetch_once(verifier: Verifier) -> str | None:
    """For `gateway explain`: fetch the keys now (blocking); None, or why not."""
    assert verifier.url is not None
    try:
        with urllib.request.urlopen(verifier.url, timeout=FETCH_TIMEOUT_S) as response:
            verifier.load_jwks(response.read().decode())
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        return f"JWKS {verifier.url} not fetched: {exc}"
    return None
