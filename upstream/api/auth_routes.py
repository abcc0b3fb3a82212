"""POST /api/auth/login and the middleware that requires a JWT on the rest of /api/.

The WebSocket route also accepts the token where browsers can put it: a `Sec-WebSocket-Protocol`
entry `bearer.<token>` (offer `events` too and the server selects that, so the token is never
echoed back), or an `access_token` query parameter (it may end up in access logs: prefer the
protocol entry).
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from sqlalchemy import select

from upstream.api.keys import SESSIONS, SETTINGS
from upstream.api.validation import check_fields, json_object, string
from upstream.auth import Identity, InvalidToken, decode_token, issue_token, verify_password
from upstream.models import User
from upstream.problems import Problem, ValidationProblem

IDENTITY = web.RequestKey("identity", Identity)
LOGIN_PATH = "/api/auth/login"
EVENTS_PATH = "/api/calls/events"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="upstream"'}


async def login(request: web.Request) -> web.Response:
    body = await json_object(request)
    errors: dict[str, str] = {}
    check_fields(body, {"username", "password"}, errors)
    username = string(body, "username", errors, required=True, max_len=64)
    password = string(body, "password", errors, required=True, max_len=1024, strip=False)
    if errors:
        raise ValidationProblem(errors)
    async with request.app[SESSIONS]() as session:
        user = (await session.execute(select(User).where(User.username == username))
                ).scalar_one_or_none()
    # Same answer, same work (one argon2 verification) for an unknown user. The verification
    # (~0.2 s of CPU here, the GIL released) runs on a worker thread: on the event loop it would
    # hold up every other request and the live call events for as long.
    verified = await asyncio.to_thread(verify_password, user.password_hash if user else None,
                                       password or "")
    if not verified or user is None:
        raise Problem(401, "Wrong username or password.", headers=CHALLENGE)
    settings = request.app[SETTINGS]
    token = issue_token(settings.secret_key, user.username, user.role,
                        settings.jwt_expiration_minutes)
    return web.json_response({"access_token": token, "token_type": "bearer",
                              "expires_in": settings.jwt_expiration_minutes * 60})


def websocket_token(request: web.Request) -> str | None:
    for entry in request.headers.getall("Sec-WebSocket-Protocol", []):
        for proto in entry.split(","):
            proto = proto.strip()
            if proto.startswith("bearer."):
                return proto[len("bearer."):]
    return request.query.get("access_token")


def request_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    if request.path == EVENTS_PATH:
        return websocket_token(request)
    return None


@web.middleware
async def require_token(request: web.Request, handler):
    if not request.path.startswith("/api/") or request.path == LOGIN_PATH:
        return await handler(request)
    token = request_token(request)
    if token is None:
        raise Problem(401, "An access token is required (Authorization: Bearer <token>).",
                      headers=CHALLENGE)
    try:
        request[IDENTITY] = decode_token(request.app[SETTINGS].secret_key, token)
    except InvalidToken as exc:
        raise Problem(401, f"The access token is not valid: {exc}.", headers=CHALLENGE) \
            from None
    return await handler(request)


def identity(request: web.Request) -> Identity:
    return request[IDENTITY]


def require_admin(request: web.Request) -> None:
    if identity(request).role != "admin":
        raise Problem(403, "Only an admin may do this.")
