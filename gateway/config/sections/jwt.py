"""Reads `jwt`: the shared secret (HS256) or the JWKS file (RS256 / ES256) bearer tokens are
verified with, and the claims checked besides the signature."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.config.reader import Reader
from gateway.settings.jwt import JwtSettings

KEYS = {
    "jwt": ("secret", "jwks", "jwks_refresh", "audience", "issuer", "leeway"),
}
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash (256 bits)


def read_jwt(r: Reader, node: yaml.Node) -> JwtSettings | None:
    m = r.mapping(node, KEYS["jwt"], "jwt")
    if m is None:
        return None
    if ("secret" in m) == ("jwks" in m):
        r.error(node, "jwt needs exactly one of 'secret' (HS256) or 'jwks' (RS256, ES256)")
        return None
    secret = jwks = jwks_url = None
    if "secret" in m:
        secret = r.string(m["secret"], "jwt.secret")
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            r.error(m["secret"], f"jwt.secret must be at least {MIN_SECRET_BYTES} bytes "
                    "(RFC 7518 3.2); generate one with `openssl rand -hex 32`")
            return None
    else:
        text = r.string(m["jwks"], "jwt.jwks")
        if text is not None and text.startswith(("https://", "http://")):
            jwks_url = _jwks_url(r, m["jwks"], text)
            if jwks_url is None:
                return None
        else:
            jwks = _read_jwks(r, m["jwks"])
    refresh = r.duration(m["jwks_refresh"], "jwt.jwks_refresh") if "jwks_refresh" in m \
        else 300.0
    audience = r.string(m["audience"], "jwt.audience") if "audience" in m else None
    issuer = r.string(m["issuer"], "jwt.issuer") if "issuer" in m else None
    leeway = r.duration(m["leeway"], "jwt.leeway", positive=False) if "leeway" in m else 0.0
    if (secret is None and jwks is None and jwks_url is None) or leeway is None \
            or refresh is None \
            or ("audience" in m and audience is None) or ("issuer" in m and issuer is None):
        return None
    return JwtSettings(secret=secret, jwks=jwks, jwks_url=jwks_url, jwks_refresh=refresh,
                       audience=audience, issuer=issuer, leeway=leeway)


def _jwks_url(r: Reader, node: yaml.Node, url: str) -> str | None:
    """A JWKS URL: https, or http to this host only (keys over plain HTTP elsewhere could be
    swapped by anyone on the path)."""
    rest = url.partition("://")[2]
    host = rest.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    if url.startswith("http://") and host not in ("127.0.0.1", "localhost", "::1"):
        r.error(node, "jwt.jwks: a JWKS URL must be https:// (http:// only to this host)")
        return None
    if not host:
        r.error(node, f"jwt.jwks: {url!r} names no host")
        return None
    return url


def _read_jwks(r: Reader, node: yaml.Node) -> str | None:
    """The JWKS file's text (relative to the policy file that names it), checked now."""
    name = r.string(node, "jwt.jwks")
    if name is None:
        return None
    path = Path(node.start_mark.name).parent / name
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        r.error(node, f"jwt.jwks: cannot read {path}: {getattr(exc, 'strerror', None) or exc}")
        return None
    import jwt as pyjwt  # only for a policy that names a JWKS file (identity.py says why)
    try:
        keys = pyjwt.PyJWKSet.from_json(text).keys
    except (ValueError, pyjwt.PyJWTError) as exc:
        r.error(node, f"jwt.jwks: {path} is not a usable JWKS ({exc})")
        return None
    private = [k.key_id for k in keys if hasattr(k.key, "private_numbers")]
    if private:
        r.error(node, f"jwt.jwks: {path} holds private keys (kid {private}); give the gateway "
                "public keys only")
        return None
    if any(k.algorithm_name.startswith("HS") for k in keys):
        r.error(node, f"jwt.jwks: {path} holds a symmetric key; use jwt.secret for HS256")
        return None
    return text
