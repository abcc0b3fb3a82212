"""Identity-aware limits: bearer JWTs verified by the policy's keys (HS256 secret, RS256 / ES256
JWKS), limits keyed on a claim with the client IP standing in for a bad token, credential
headers keyed by digest, `require_jwt` routes, and a table through a running gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.compiled import CompiledPolicy
from gateway.config import load_policy
from gateway.explain import DescribedRequest, explain
from gateway.identity import TokenOutcome, Verifier
from gateway.jwks import MAX_JWKS_BYTES, fetch_once
from gateway.plan import Action, Head, plan
from gateway.ratelimit.keys import limit_tag
from gateway.settings.jwt import JwtSettings
from gateway.settings.ratelimit import KeyPart, RateLimitPolicy
from tests.support.client import request
from tests.support.policy import problems, write_policy
from tests.support.processes import eventually, free_port, start_gateway, stop, wait_for_port
from tests.support.recorder import gateway_before_recorder, start_recorder

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("jwt_keys")

SECRET = "s" * 40
HS = Verifier(JwtSettings(secret=SECRET))


def token(claims: dict, key: object = SECRET, algorithm: str = "HS256",
          headers: dict | None = None) -> str:
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, key, algorithm=algorithm,
                      headers=headers)


# --- verification -------------------------------------------------------------------------------

@pytest.mark.parametrize(("authorization", "outcome"), [
    (None, TokenOutcome.MISSING),
    ("", TokenOutcome.MISSING),
    ("Basic dXNlcjpwYXNz", TokenOutcome.MISSING),
    (f"Bearer {token({'sub': 'ann'})}", TokenOutcome.VALID),
    (f"bearer   {token({'sub': 'ann'})}", TokenOutcome.VALID),  # the scheme is case-insensitive
    (f"Bearer {token({'sub': 'ann', 'exp': int(time.time()) - 60})}", TokenOutcome.EXPIRED),
    (f"Bearer {token({'sub': 'ann'}, key='t' * 40)}", TokenOutcome.INVALID),  # another secret
    (f"Bearer {jwt.encode({'sub': 'ann', 'exp': 2**40}, None, algorithm='none')}",
     TokenOutcome.INVALID),  # alg none
    (f"Bearer {jwt.encode({'sub': 'ann'}, SECRET, algorithm='HS256')}",
     TokenOutcome.INVALID),  # no exp
    (f"Bearer {token({'sub': 'ann'}, algorithm='HS512')}", TokenOutcome.INVALID),  # not HS256
    ("Bearer not.a.jwt", TokenOutcome.INVALID),
], ids=["none", "empty", "basic", "valid", "scheme-case", "expired", "other-secret",
        "alg-none", "no-exp", "hs512", "garbage"])  # ids: the tokens differ per process
def test_a_secret_verifies_hs256_tokens_only(authorization: str | None,
                                               outcome: TokenOutcome) -> None:
    assert HS.identify(authorization).outcome is outcome


def test_audience_and_issuer_are_checked_when_the_policy_names_them() -> None:
    strict = Verifier(JwtSettings(secret=SECRET, audience="api", issuer="https://idp"))
    good = token({"sub": "a", "aud": "api", "iss": "https://idp"})
    assert strict.identify(f"Bearer {good}").outcome is TokenOutcome.VALID
    for claims in ({"sub": "a", "aud": "web", "iss": "https://idp"},
                   {"sub": "a", "aud": "api", "iss": "https://evil"}, {"sub": "a"}):
        assert strict.identify(f"Bearer {token(claims)}").outcome is TokenOutcome.INVALID


def jwks_file(folder: Path) -> tuple[Path, rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    keys = []
    for kid, key, alg in (("r1", rsa_key, "RS256"), ("e1", ec_key, "ES256")):
        jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
        keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
    path = folder / "jwks.json"
    path.write_text(json.dumps({"keys": keys}))
    return path, rsa_key, ec_key


def test_a_jwks_verifies_each_key_by_its_own_algorithm_and_refuses_confusion(
        tmp_path: Path) -> None:
    path, rsa_key, ec_key = jwks_file(tmp_path)
    verifier = Verifier(JwtSettings(jwks=path.read_text()))
    rs = token({"sub": "r"}, rsa_key, "RS256", {"kid": "r1"})
    es = token({"sub": "e"}, ec_key, "ES256", {"kid": "e1"})
    assert verifier.identify(f"Bearer {rs}").claims["sub"] == "r"
    assert verifier.identify(f"Bearer {es}").claims["sub"] == "e"
    assert verifier.identify(f"Bearer {token({'sub': 'x'}, rsa_key, 'RS256', {'kid': 'e1'})}"
                             ).outcome is TokenOutcome.INVALID  # the EC key's kid
    assert verifier.identify(f"Bearer {token({'sub': 'x'}, rsa_key, 'RS256', {'kid': 'zz'})}"
                             ).outcome is TokenOutcome.INVALID  # unknown kid
    # algorithm confusion: the public key's PEM used as an HMAC secret
    pem = rsa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    forged = _hs256_with_key(pem, {"sub": "admin"}, "r1")
    assert verifier.identify(f"Bearer {forged}").outcome is TokenOutcome.INVALID


def _hs256_with_key(key: bytes, claims: dict, kid: str) -> str:
    """A token signed HS256 with arbitrary key bytes (pyjwt refuses a PEM key as an HMAC
    secret; an attacker's own tooling would not)."""
    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = b64(json.dumps({**claims, "exp": int(time.time()) + 600}).encode())
    signature = b64(hmac.new(key, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + signature).decode()


# --- keys ---------------------------------------------------------------------------------------

def test_a_claim_keys_the_limit_and_a_bad_token_falls_back_to_the_client_ip() -> None:
    policy = RateLimitPolicy("api", 10, 60_000, key=(KeyPart("jwt", claim="sub"),))
    none = CIMultiDictProxy(CIMultiDict())
    valid = HS.identify(f"Bearer {token({'sub': 'ann'})}")
    assert limit_tag(policy, "203.0.113.7", none, valid) == ("jwt.sub=ann", None)
    expired = HS.identify(f"Bearer {token({'sub': 'ann', 'exp': 1})}")
    assert limit_tag(policy, "203.0.113.7", none, expired) == \
        ("ip=203.0.113.7", "bearer token: token expired: keyed by client IP")


def test_a_credential_header_is_keyed_by_its_digest_never_by_the_secret() -> None:
    policy = RateLimitPolicy("api", 10, 60_000, key=(KeyPart("header", "x-api-key"),))
    tenant = RateLimitPolicy("t", 10, 60_000, key=(KeyPart("header", "x-tenant"),))
    headers = CIMultiDictProxy(CIMultiDict({"X-API-Key": "sk_live_abc123", "X-Tenant": "acme"}))
    tag, _ = limit_tag(policy, "203.0.113.7", headers)
    assert "sk_live_abc123" not in tag and tag.startswith("h.x-api-key=#")
    assert limit_tag(tenant, "203.0.113.7", headers)[0] == "h.x-tenant=acme"  # not a secret


# --- the policy ---------------------------------------------------------------------------------

BASE = """\
version: 1
upstream: {url: "http://127.0.0.1:9"}
"""


def test_jwt_errors_are_reported_at_their_node(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE + """\
jwt: {secret: short}
rate_limits:
  user: {limit: 5, per: 1m, key: "jwt:s u b"}
routes:
  - {name: a, match: {path_prefix: /}, rate_limits: [user]}
""")
    assert problems(path) == [
        f"{path}:3:15: jwt.secret must be at least 32 bytes (RFC 7518 3.2); generate one "
        "with `openssl rand -hex 32`",
        f"{path}:5:34: rate_limits.user.key: 's u b' is not a JWT claim name",
    ]
    missing = write_policy(tmp_path, BASE + """\
rate_limits:
  user: {limit: 5, per: 1m, key: jwt}
routes:
  - {name: a, match: {path_prefix: /a/}, rate_limits: [user]}
  - {name: b, match: {path_prefix: /}, require_jwt: true}
""", name="missing.yaml")
    assert problems(missing) == [
        f"{missing}:4:34: rate_limits.user.key: a jwt:<claim> key needs the 'jwt' section "
        "(a secret or a JWKS to verify tokens with)",
        f"{missing}:7:53: routes[1].require_jwt needs the 'jwt' section (a secret or a JWKS "
        "to verify tokens with)",
    ]


def test_a_jwks_with_a_private_key_is_refused(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{**jwk, "kid": "p"}]}))
    path = write_policy(tmp_path, BASE + """\
jwt: {jwks: keys.json}
routes:
  - {name: a, match: {path_prefix: /}, require_jwt: true}
""")
    assert problems(path) == [
        f"{path}:3:13: jwt.jwks: {tmp_path}/keys.json holds private keys (kid ['p']); give "
        "the gateway public keys only"]


def test_require_jwt_answers_401_with_a_challenge_but_lets_preflights_through(
        tmp_path: Path) -> None:
    compiled = CompiledPolicy.build(load_policy(write_policy(tmp_path, BASE + f"""\
jwt: {{secret: "{SECRET}"}}
cors:
  default: {{allow_origins: ["https://app.example"], allow_methods: [GET, PUT],
            allow_headers: [Authorization]}}
routes:
  - {{name: a, match: {{path_prefix: /}}, require_jwt: true}}
""")))

    def head(method: str, **headers: str) -> Head:
        return Head(method, "/x", CIMultiDictProxy(CIMultiDict({"Host": "h", **headers})),
                    "203.0.113.7")

    bare = plan(compiled, head("GET"), trusted_peer=False, request_id="r")
    assert (bare.action, bare.verdict.status) == (Action.ANSWER, 401)
    assert bare.verdict.headers == (("WWW-Authenticate", "Bearer"),)
    bad = plan(compiled, head("GET", Authorization="Bearer x.y.z"), trusted_peer=False,
               request_id="r")
    assert bad.verdict.headers == (("WWW-Authenticate", 'Bearer error="invalid_token"'),)
    good = plan(compiled, head("GET", Authorization=f"Bearer {token({'sub': 'a'})}"),
                trusted_peer=False, request_id="r")
    assert good.action is Action.FORWARD
    preflight = plan(compiled, head("OPTIONS", Origin="https://app.example",
                                    **{"Access-Control-Request-Method": "PUT"}),
                     trusted_peer=False, request_id="r")
    assert preflight.action is Action.PREFLIGHT


# --- through a running gateway ------------------------------------------------------------------

ROUTES = """\
  - name: sync  # the recorder's end-of-exchange marker, counted by nothing
    match: {host: sync.test}
  - name: private
    match: {path_prefix: /private/}
    require_jwt: true
  - name: api
    match: {path_prefix: /}
    rate_limits: [per_user]
"""
TOP = f"""\
jwt: {{secret: "{SECRET}"}}
rate_limits:
  per_user: {{limit: 2, per: 1m, key: "jwt:sub"}}
"""


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):
    with gateway_before_recorder(tmp_path_factory.mktemp("jwt"),
                                 routes=ROUTES, top_extra=TOP) as started:
        yield started


@pytest.mark.integration
def test_each_user_has_its_own_quota_and_bad_tokens_share_the_client_ips(running) -> None:
    gw, rec = running
    compiled = CompiledPolicy.build(load_policy(gw.config))
    ann, bob = token({"sub": "ann"}), token({"sub": "bob"})
    expired = token({"sub": "ann", "exp": int(time.time()) - 60})
    # (path, token, status): the client IP (127.0.0.1) stands in for the expired one and the
    # missing one, so those two share one quota
    cases = [
        ("/1", ann, 200), ("/2", ann, 200), ("/3", ann, 429),
        ("/4", bob, 200), ("/5", bob, 200), ("/6", bob, 429),
        ("/7", expired, 200), ("/8", None, 200), ("/9", expired, 429),
        ("/private/a", None, 401), ("/private/b", expired, 401), ("/private/c", bob, 200),
    ]
    mark = rec.mark()
    for path, bearer, status in cases:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        reply = request(gw.port, "GET", path, headers=headers)
        assert reply.status == status, (path, reply.body)
        report = explain(compiled, DescribedRequest("GET", path, tuple(headers.items()),
                                                    peer="127.0.0.1"))
        if status == 401:
            assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            assert report["outcome"]["status"] == 401
        elif path != "/private/c":
            key = report["rate_limits"][0]["key"]
            expected = {ann: "jwt.sub=ann", bob: "jwt.sub=bob"}.get(bearer, "ip=127.0.0.1")
            assert "{" + expected + "}" in key, (path, key)
    rec.sync(gw.port)
    reached = [e["target"] for e in rec.since(mark)]
    assert reached == [p for p, _, status in cases if status == 200]
    # the token went to the upstream as the client sent it (the gateway only reads it)
    assert [v for n, v in rec.since(mark)[-1]["headers"] if n.lower() == "authorization"] == \
        [f"Bearer {bob}"]


@pytest.mark.integration
def test_a_jwks_url_is_fetched_and_fetched_again_when_the_provider_rotates_keys(
        tmp_path: Path) -> None:
    keys_dir = tmp_path / "idp"
    keys_dir.mkdir()
    document, rsa_key, _ = jwks_file(keys_dir)
    port = free_port()
    idp = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                            "127.0.0.1", "--directory", str(keys_dir)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec = start_recorder(tmp_path)
    gw = None
    try:
        wait_for_port(port, idp)
        top = f"""\
jwt: {{jwks: "http://127.0.0.1:{port}/{document.name}", jwks_refresh: 1s}}
rate_limits:
  per_user: {{limit: 100, per: 1m, key: "jwt:sub"}}
"""
        gw = start_gateway(tmp_path, rec.url, routes=ROUTES, top_extra=top)
        for _ in range(3):  # the client IP's own quota, used by requests without a token
            assert request(gw.port, "GET", "/anon").status == 200
        users = itertools.count()

        def counted_by_subject(key: object, kid: str) -> bool:
            """A fresh subject starts at 99 left; a refused token counts against the client
            IP, which has less left."""
            bearer = token({"sub": f"user-{next(users)}"}, key, "RS256", {"kid": kid})
            reply = request(gw.port, "GET", "/y", headers={"Authorization": f"Bearer {bearer}"})
            return reply.status == 200 and reply.headers.get("X-RateLimit-Remaining") == "99"

        assert eventually(lambda: counted_by_subject(rsa_key, "r1"))
        # the provider rotates to a new key (kid r2): accepted once the gateway fetched the
        # set again, which a token naming an unknown kid brings forward
        new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(new_key.public_key()))
        document.write_text(json.dumps({"keys": [{**jwk, "kid": "r2", "alg": "RS256"}]}))
        assert eventually(lambda: counted_by_subject(new_key, "r2"), timeout=15)
    finally:
        if gw is not None:
            stop(gw.proc)
        stop(rec.proc)
        stop(idp)


@pytest.mark.integration  # a real HTTP server on loopback
def test_a_jwks_fetch_follows_no_redirect_and_refuses_a_document_too_large(
        tmp_path: Path) -> None:
    """The keys come from the URL the policy names: a redirect is a failed fetch (never
    followed, so an open redirect at the provider cannot hand the gateway other keys), as is
    an error status or a body over MAX_JWKS_BYTES; the keys known so far are kept."""
    document, _, _ = jwks_file(tmp_path)
    keys = document.read_bytes()

    class Provider(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "/keys.json")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = {"/keys.json": keys, "/huge": b" " * (MAX_JWKS_BYTES + 1) + keys}.get(
                self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        verifier = Verifier(JwtSettings(jwks_url=base + "/keys.json"))
        assert fetch_once(verifier) is None and verifier.has_keys
        for path, why in (("/moved", "status 302"), ("/huge", f"larger than {MAX_JWKS_BYTES}"),
                          ("/missing", "status 404")):
            verifier.url = base + path
            problem = fetch_once(verifier)
            assert problem is not None and why in problem, (path, problem)
            assert verifier.has_keys, path  # the keys fetched before are kept
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration  # a real gateway and a provider on loopback
def test_a_jwks_fetch_under_way_does_not_hold_up_a_stopping_gateway(tmp_path: Path) -> None:
    """A provider that answers a byte every 2 s (each read within the fetch's timeout) would
    keep a fetch going for minutes: SIGTERM still stops the gateway, exit 0, without waiting
    for it."""
    asked = threading.Event()
    stop_sending = threading.Event()

    class SlowProvider(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.flush()
            asked.set()
            while not stop_sending.wait(2.0):
                try:
                    self.wfile.write(b" ")
                    self.wfile.flush()
                except OSError:
                    return  # the gateway hung up (it exited)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowProvider)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    rec = start_recorder(tmp_path)
    gw = None
    try:
        top = f"""\
jwt: {{jwks: "http://127.0.0.1:{server.server_address[1]}/keys.json"}}
rate_limits:
  per_user: {{limit: 100, per: 1m, key: "jwt:sub"}}
"""
        gw = start_gateway(tmp_path, rec.url, routes=ROUTES, top_extra=top)
        assert asked.wait(10), "the gateway never asked for its keys"
        gw.proc.send_signal(signal.SIGTERM)
        try:
            code = gw.proc.wait(timeout=20)  # the fetch alone would take ~200 s
        except subprocess.TimeoutExpired:
            pytest.fail("a JWKS fetch under way held up the stopping gateway")
        assert code == 0
    finally:
        stop_sending.set()
        if gw is not None:
            stop(gw.proc)
        stop(rec.proc)
        server.shutdown()
        server.server_close()
