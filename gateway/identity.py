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
        # PyJWT (and the cryptography it loads) only for a policy that verifies tokens: they
        # add ~70 ms to the start of every gateway process and command
        import jwt
        self._jwt = jwt
        self.settings = settings
        self._keys: dict[str | None, tuple[Any, str]] = {}  # kid -> (key, algorithm)
        self.url = settings.jwks_url  # keys fetched by the I/O layer (jwks.py), if any
        self.unknown_kid = False  # a token named a key this set lacks: time to fetch again
        if settings.secret is not None:
            self._keys[None] = (settings.secret, "HS256")
        elif settings.jwks is not None:
            self.load_jwks(settings.jwks)

    def load_jwks(self, text: str) -> None:
        """Replace the keys with a JWKS document's public, asymmetric ones (ValueError for a
        document that is not one)."""
        keys: dict[str | None, tuple[Any, str]] = {}
        jwt = self._jwt
        try:
            jwks = jwt.PyJWKSet.from_dict(json.loads(text)).keys
        except jwt.PyJWTError as exc:
            raise ValueError(str(exc) or type(exc).__name__) from None
        for jwk in jwks:
            if jwk.algorithm_name.startswith("HS") or hasattr(jwk.key, "private_numbers"):
                continue  # never a shared or private key from a document
            keys[jwk.key_id] = (jwk.key, jwk.algorithm_name)
        if not keys:
            raise ValueError("no public signing keys in the JWKS")
        self._keys = keys
        self.unknown_kid = False

    def adopt(self, other: Verifier) -> None:
        """The fetched keys of the previous policy's verifier, when the URL is the same: a
        reload does not wait for a fetch."""
        if self.url is not None and other.url == self.url and other._keys:
            self._keys = other._keys

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    def identify(self, authorization: str | None) -> Identity:
        if not authorization:
            return MISSING
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return MISSING
        jwt = self._jwt
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if self.settings.secret is not None:
                key, algorithm = self._keys[None]
            elif kid in self._keys:
                key, algorithm = self._keys[kid]
            elif len(self._keys) == 1 and kid is None:
                key, algorithm = next(iter(self._keys.values()))
            elif not self._keys:
                return Identity(TokenOutcome.INVALID, reason="signing keys not fetched yet")
            else:
                self.unknown_kid = True
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
