"""Bearer-token settings (`jwt` in the policy): how the gateway verifies a JWT it keys limits
on (`key: jwt:<claim>`) or that a route requires (`require_jwt: true`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JwtSettings:
    # exactly one: a shared secret (HS256), or a JWKS document (RS256 / ES256 public keys)
    secret: str | None = None
    jwks: str | None = None  # the JWKS JSON text, read at load from the file the policy names
    audience: str | None = None  # when set, the token's `aud` must name it
    issuer: str | None = None  # when set, the token's `iss` must be it
    leeway: float = 0.0  # seconds of clock skew allowed on exp / nbf / iat

    def __repr__(self) -> str:  # the secret never reaches a log or a traceback
        return (f"JwtSettings(secret={'***' if self.secret else None}, "
                f"jwks={'...' if self.jwks else None}, audience={self.audience!r}, "
                f"issuer={self.issuer!r}, leeway={self.leeway})")
