"""Passwords (argon2id via argon2-cffi) and access tokens (HS256 JWTs via pyjwt).

An unknown user costs the same argon2 verification as a wrong password (against a dummy hash),
and gets the same answer, so neither the status nor the timing tells which usernames exist.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ALGORITHM = "HS256"
_hasher = PasswordHasher()


@cache
def dummy_hash() -> str:
    """The hash an unknown user's password is checked against. Made once, on first use, not at
    import: it costs one argon2 hash (~0.1 s), which every command and test importing this
    module would pay. The API makes it at start-up (make_app), so no login pays for it."""
    return _hasher.hash("not a password anyone has")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """True when `password` matches; with no hash (unknown user) a dummy is checked for time."""
    try:
        return _hasher.verify(password_hash or dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class Identity:
    username: str
    role: str


def issue_token(secret: str, username: str, role: str, minutes: int) -> str:
    now = int(time.time())
    return jwt.encode({"sub": username, "role": role, "iat": now, "exp": now + minutes * 60},
                      secret, algorithm=ALGORITHM)


class InvalidToken(Exception):
    pass


def decode_token(secret: str, token: str) -> Identity:
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM],
                            options={"require": ["sub", "exp", "iat"]})
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.PyJWTError:
        raise InvalidToken("invalid token") from None
    role = claims.get("role")
    if not isinstance(claims["sub"], str) or role not in ("admin", "operator"):
        raise InvalidToken("invalid token")
    return Identity(claims["sub"], role)
