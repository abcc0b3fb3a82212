"""Who the caller is, from a bearer JWT: verified once per request, for the rate-limit keys
that name a claim (`jwt:sub`) and for routes that require a token.

Pure (no I/O): the keys come with the policy (a shared secret for HS256, or a JWKS document
read at load for RS256 / ES256). The algorithm is never the token's choice: a secret verifies
HS256 only, a JWKS its keys' own algorithms only, so a token signed with the public key as an
HMAC secret (the classic algorithm confusion) is refused. `exp` and `nbf` are checked with the
policy's leeway; `aud` and `iss` when the policy names them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.settings.jwt import JwtSettings


class TokenOutcome(enum.Enum):
    NOT_NEEDED = "not needed"  # the route neither keys on a claim nor requires a token
    MISSING = "no bearer token"
    VALID = "valid"
    EXPIRED = "expired"
    INVALID = "invalid"  # bad signature, wrong algorithm, unknown key, malformed, aud/iss


@dataclass(frozen=True, slots=True)
class Identity:
    outcome: TokenOutcome
    claims: dict[str, Any] | None = None
    reason: str = ""  # why a token was refused (for explain and the log, never the client)


NOT_NEEDED = Identity(TokenOutcome.NOT_NEEDED)
MISSING = Identity(TokenOutcome.MISSING, reason="no bearer token")


class Verifier:
    """The policy's keys, built once at load."""

    def __init__(self, settings: JwtSettings) -> None:
        self.settings = settings
        self._keys: dict[str | None, tuple[Any, str]] = {}  # kid -> (key, algorithm)
        if settings.secret is not None:
            self._keys[None] = (settings.secret, "HS256")
        else:
            assert settings.jwks is not None
            for jwk in jwt.PyJWKSet.from_dict(json.loads(settings.jwks)).keys:
                self._keys[jwk.key_id] = (jwk.key, jwk.algorithm_name)

    def identify(self, authorization: str | None) -> Identity:
        if not authorization:
            return MISSING
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return MISSING
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if self.settings.secret is not None:
                key, algorithm = self._keys[None]
            elif kid in self._keys:
                key, algorithm = self._keys[kid]
            elif len(self._keys) == 1 and kid is None:
                key, algorithm = next(iter(self._keys.values()))
            else:
                return Identity(TokenOutcome.INVALID, reason=f"unknown key id {kid!r}")
            s = self.settings
            claims = jwt.decode(
                token, key=key, algorithms=[algorithm], audience=s.audience, issuer=s.issuer,
                leeway=s.leeway, options={"require": ["exp"], "verify_aud": s.audience is not None})
        except jwt.ExpiredSignatureError:
            return Identity(TokenOutcome.EXPIRED, reason="token expired")
        except jwt.PyJWTError as exc:
            return Identity(TokenOutcome.INVALID, reason=str(exc) or type(exc).__name__)
        return Identity(TokenOutcome.VALID, claims)


def claim_text(value: Any) -> str | None:
    """A claim as key text: strings and integers; anything else keys nothing."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value)
