"""redis.url parsing (gateway.redis.endpoint.parse): what each URL form means, what is refused
and why, the TLS context of rediss://, and how the policy loader reports a bad URL. Pure: no
Redis."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from redis.connection import parse_url as redis_py_parse_url

from gateway.config import load_policy
from gateway.redis.endpoint import Endpoint, parse
from tests.support.policy import problems, write_policy
from tests.test_ratelimit_config import BASE

VALID: list[tuple[str, Endpoint]] = [
    # redis://: host, port, default port, IPv6 in brackets, db from the path or from ?db=
    ("redis://10.0.0.3:6380/0", Endpoint("standalone", hosts=(("10.0.0.3", 6380),))),
    ("redis://cache.internal", Endpoint("standalone", hosts=(("cache.internal", 6379),))),
    ("redis://cache.internal/", Endpoint("standalone", hosts=(("cache.internal", 6379),))),
    ("redis://h:6379/7", Endpoint("standalone", hosts=(("h", 6379),), db=7)),
    ("redis://h/%33", Endpoint("standalone", hosts=(("h", 6379),), db=3)),
    ("redis://h?db=4", Endpoint("standalone", hosts=(("h", 6379),), db=4)),
    ("redis://[::1]:6380/2", Endpoint("standalone", hosts=(("::1", 6380),), db=2)),
    ("redis://[::1]", Endpoint("standalone", hosts=(("::1", 6379),))),
    ("redis://[2001:db8::7]/1", Endpoint("standalone", hosts=(("2001:db8::7", 6379),), db=1)),
    ("redis://h:65535", Endpoint("standalone", hosts=(("h", 65535),))),
    # credentials, percent-decoded
    ("redis://:pw@h:6379/1",
     Endpoint("standalone", hosts=(("h", 6379),), db=1, password="pw")),
    ("redis://alice:s3cret@h/2",
     Endpoint("standalone", hosts=(("h", 6379),), db=2, username="alice", password="s3cret")),
    ("redis://u%40corp:p%3Aw%2F%40%25@h",
     Endpoint("standalone", hosts=(("h", 6379),), username="u@corp", password="p:w/@%")),
    # unix sockets
    ("unix:///run/redis.sock", Endpoint("standalone", path="/run/redis.sock")),
    ("unix:///run/redis.sock?db=5", Endpoint("standalone", path="/run/redis.sock", db=5)),
    ("unix://:pw@/tmp/my%20redis.sock",
     Endpoint("standalone", path="/tmp/my redis.sock", password="pw")),
    # TLS: the ssl_* parameters are kept (decoded), nothing else changes
    ("rediss://h:6380", Endpoint("standalone", hosts=(("h", 6380),), tls=())),
    ("rediss://:pw@h/1?ssl_cert_reqs=none",
     Endpoint("standalone", hosts=(("h", 6379),), db=1, password="pw",
              tls=(("ssl_cert_reqs", "none"),))),
    ("rediss://h?ssl_ca_certs=%2Fetc%2Fmy%20ca.pem&ssl_check_hostname=false&db=2",
     Endpoint("standalone", hosts=(("h", 6379),), db=2,
              tls=(("ssl_ca_certs", "/etc/my ca.pem"), ("ssl_check_hostname", "false")))),
    ("rediss://h?ssl_certfile=/c.pem&ssl_keyfile=/k.pem&ssl_cert_reqs=optional",
     Endpoint("standalone", hosts=(("h", 6379),),
              tls=(("ssl_certfile", "/c.pem"), ("ssl_keyfile", "/k.pem"),
                   ("ssl_cert_reqs", "optional")))),
    # Sentinel: seeds, service, optional db
    ("redis+sentinel://s1:26379/mymaster",
     Endpoint("sentinel", hosts=(("s1", 26379),), service="mymaster")),
    ("redis+sentinel://:pw@s1:26379,s2:26380,[::1]:26381/mymaster/4",
     Endpoint("sentinel", hosts=(("s1", 26379), ("s2", 26380), ("::1", 26381)), db=4,
              password="pw", service="mymaster")),
    # Cluster: seeds only
    ("redis+cluster://n1:7000", Endpoint("cluster", hosts=(("n1", 7000),))),
    # hosts are percent-decoded, as redis-py does (an IPv6 zone's `%` is written `%25`)
    ("redis://%31%32%37.0.0.1:6380", Endpoint("standalone", hosts=(("127.0.0.1", 6380),))),
    ("redis://[fe80::1%25eth0]:6380", Endpoint("standalone", hosts=(("fe80::1%eth0", 6380),))),
    # redis-py's short booleans
    ("rediss://h?ssl_check_hostname=F",
     Endpoint("standalone", hosts=(("h", 6379),), tls=(("ssl_check_hostname", "F"),))),
    ("redis+cluster://u:p%21@n1:7000,n2:7001,[::1]:7002/",
     Endpoint("cluster", hosts=(("n1", 7000), ("n2", 7001), ("::1", 7002)), username="u",
              password="p!")),
]


@pytest.mark.parametrize(("url", "expected"), VALID, ids=[u for u, _ in VALID])
def test_valid_urls_give_their_endpoint(url: str, expected: Endpoint) -> None:
    assert parse(url) == expected


REDIS_PY_FORMS = [u for u, _ in VALID if u.split("://")[0] in ("redis", "rediss", "unix")]


@pytest.mark.parametrize("url", REDIS_PY_FORMS)
def test_redis_py_urls_keep_their_meaning(url: str) -> None:
    """The module promises an operator's redis-py URL means the same here."""
    theirs = redis_py_parse_url(url)
    ours = parse(url)
    if ours.path:
        assert (ours.path, ours.db) == (theirs["path"], theirs.get("db", 0))
    else:
        assert ours.hosts == ((theirs.get("host", "localhost"), theirs.get("port", 6379)),)
        assert ours.db == theirs.get("db", 0)
    assert (ours.username, ours.password) == (theirs.get("username"), theirs.get("password"))


def test_a_db_given_twice_is_refused_rather_than_read_differently_from_redis_py() -> None:
    """`redis://h/1?db=3` is db 3 for redis-py (the query wins). Using db 1 silently would put
    the counters in another database than the operator's other tools."""
    url = "redis://h/1?db=3"
    assert redis_py_parse_url(url)["db"] == 3
    with pytest.raises(ValueError, match="the database is given twice"):
        parse(url)


def test_a_user_without_a_password_still_authenticates() -> None:
    """`alice:@` is an ACL user with an empty password (`nopass`): AUTH alice "" is sent, not
    nothing (which would leave the connection as the default user)."""
    endpoint = parse("redis://alice:@h/1")
    assert (endpoint.username, endpoint.password, endpoint.db) == ("alice", "", 1)
    assert parse("redis://h").password is None


REFUSED = [
    # scheme
    ("http://h:6379", "must start with redis://"),
    ("REDIS://h:6379", "must start with redis://"),
    ("Redis://h", "must start with redis://"),
    ("redis:/h:6379", "must start with redis://"),
    ("h:6379", "must start with redis://"),
    ("tcp://h:6379", "must start with redis://"),
    # host
    ("redis://", "needs a host"),
    ("redis:///0", "needs a host"),
    ("redis://:pw@/0", "needs a host"),
    ("redis://:6379", "host"),
    ("redis://:pw@:6379/0", "host"),
    ("redis+sentinel://:26379/mymaster", "host"),
    ("redis+cluster://n1:7000,:7001", "host"),
    # port
    ("redis://h:0", "bad port"),
    ("redis://h:65536", "bad port"),
    ("redis://h:-1", "bad port"),
    ("redis://h:http", "bad port"),
    ("redis://h:\uff16\uff13\uff17\uff19", "bad port"),  # full-width digits
    ("redis://h:6379:7", "port"),
    ("redis+cluster://n1:7000,n2", "needs a port"),
    ("redis://a..b:6379", "not a valid host name"),
    ("redis://" + "x" * 64 + ".example:6379", "not a valid host name"),
    ("redis+sentinel://s1/mymaster", "needs a port"),
    # database
    ("redis://h/zero", "database must be a number"),
    ("redis://h/-1", "database must be a number"),
    ("redis://h/\u0663", "database must be a number"),  # Arabic-Indic digit three
    ("redis://h?db=x", "database must be a number"),
    ("redis://h?db=", "database must be a number"),
    ("unix:///run/redis.sock?db=one", "database must be a number"),
    ("redis+sentinel://s1:26379/mymaster/x", "database must be a number"),
    # path
    ("redis://h/0/1", "the path can only be the database number"),
    ("rediss://h/0/extra", "the path can only be the database number"),
    ("redis+sentinel://s1:26379/mymaster/0/1", "the path is /service_name[/db]"),
    ("redis+cluster://n1:7000/0", "a cluster URL has no path"),
    ("redis+cluster://n1:7000/mymaster", "a cluster URL has no path"),
    ("unix://", "needs a socket path"),
    ("unix://redis.sock", "needs a socket path"),
    # query parameters
    ("redis://h?socket_timeout=1", "unsupported parameter 'socket_timeout' (supported: db)"),
    ("redis://h/0?health_check_interval=5", "unsupported parameter 'health_check_interval'"),
    ("rediss://h?socket_timeout=1", "unsupported parameter 'socket_timeout'"),
    ("redis://h?ssl_cert_reqs=none", "unsupported parameter 'ssl_cert_reqs' (supported: db)"),
    ("redis://h?ssl_ca_certs=/ca.pem", "unsupported parameter 'ssl_ca_certs'"),
    ("unix:///run/redis.sock?ssl_cert_reqs=none", "unsupported parameter 'ssl_cert_reqs'"),
    ("rediss://h?ssl_cert_reqs=CERT_NONE", "ssl_cert_reqs must be none, optional or required"),
    ("rediss://h?ssl_cert_reqs=", "ssl_cert_reqs must be none, optional or required"),
    ("rediss://h?ssl_check_hostname=maybe", "ssl_check_hostname must be true or false"),
    ("rediss://h?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
    # redis-py reads the first of a repeated parameter, a dict the last: refused
    ("redis://h?db=1&db=2", "parameter 'db' is given twice"),
    ("rediss://h?ssl_cert_reqs=required&ssl_cert_reqs=none",
     "parameter 'ssl_cert_reqs' is given twice"),
    ("redis://h//5", "empty segment in the path"),
    ("redis+sentinel://s1:26379/mymaster?db=2", "unsupported parameter 'db'"),
    ("redis+cluster://n1:7000?db=0", "unsupported parameter 'db'"),
    # sentinel / cluster shapes
    ("redis+sentinel://s1:26379", "redis+sentinel:// needs /service_name"),
    ("redis+sentinel://s1:26379/", "redis+sentinel:// needs /service_name"),
    ("redis+sentinel:///mymaster", "needs at least one host:port"),
    ("redis+cluster://", "needs at least one host:port"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED, ids=[u for u, _ in REFUSED])
def test_unusable_urls_are_refused_with_a_one_line_reason(url: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse(url)
    message = str(info.value)
    assert reason in message, message
    assert "\n" not in message


# -- rediss:// TLS context ---------------------------------------------------------------------

def test_plain_urls_have_no_tls_context() -> None:
    assert parse("redis://h").ssl_context() is None
    assert parse("unix:///run/redis.sock").ssl_context() is None
    assert parse("redis+sentinel://s1:26379/m").ssl_context() is None


def test_rediss_verifies_the_server_by_default() -> None:
    context = parse("rediss://h:6380").ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_cert_reqs_none_turns_hostname_checks_off_too() -> None:
    context = parse("rediss://h?ssl_cert_reqs=none").ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False
    # even when hostname checks are asked for explicitly: CERT_NONE cannot check them
    context = parse("rediss://h?ssl_check_hostname=true&ssl_cert_reqs=none").ssl_context()
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (ssl.CERT_NONE, False)


@pytest.mark.parametrize(("query", "mode", "hostname"), [
    ("ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
    ("ssl_cert_reqs=required", ssl.CERT_REQUIRED, True),
    ("ssl_check_hostname=false", ssl.CERT_REQUIRED, False),
    ("ssl_check_hostname=no", ssl.CERT_REQUIRED, False),
    ("ssl_check_hostname=0", ssl.CERT_REQUIRED, False),
    ("ssl_check_hostname=False", ssl.CERT_REQUIRED, False),  # redis-py reads it so too
    ("ssl_check_hostname=yes&ssl_cert_reqs=optional", ssl.CERT_OPTIONAL, True),
])
def test_tls_parameters_shape_the_context(query: str, mode: ssl.VerifyMode,
                                          hostname: bool) -> None:
    context = parse(f"rediss://h?{query}").ssl_context()
    assert context is not None
    assert (context.verify_mode, context.check_hostname) == (mode, hostname)


def test_ssl_ca_certs_is_the_file_the_context_trusts(tmp_path: Path) -> None:
    missing = tmp_path / "no such ca.pem"
    endpoint = parse(f"rediss://h?ssl_ca_certs={str(missing).replace(' ', '%20')}")
    with pytest.raises(FileNotFoundError):
        endpoint.ssl_context()  # the decoded path was used, not ignored


# -- the policy loader -------------------------------------------------------------------------

URL_LINE = 3  # BASE: `redis: {url: "${REDIS_URL:-}", ...}`
URL_COLUMN = BASE.splitlines()[URL_LINE - 1].index('"${REDIS_URL') + 1


@pytest.mark.parametrize(("url", "reason"), [
    ("redis://h/x", "database must be a number, not 'x'"),
    ("redis://h?socket_timeout=1", "unsupported parameter 'socket_timeout'"),
    ("REDIS://h", "must start with redis://"),
    ("redis+cluster://n1:7000/0", "a cluster URL has no path"),
])
def test_a_bad_redis_url_is_a_policy_problem_at_the_url_value(tmp_path: Path, url: str,
                                                              reason: str) -> None:
    assert URL_COLUMN > 1
    found = problems(write_policy(tmp_path, BASE.replace("${REDIS_URL:-}", url, 1), "p.yaml"), {})
    assert len(found) == 1, found
    prefix = f"{tmp_path / 'p.yaml'}:{URL_LINE}:{URL_COLUMN}: redis.url "
    assert found[0].startswith(prefix), found
    assert reason in found[0], found


def test_a_bad_redis_url_from_the_environment_points_at_the_url_in_the_file(
        tmp_path: Path) -> None:
    found = problems(write_policy(tmp_path, BASE, "p.yaml"), {"REDIS_URL": "redis://h:99999/0"})
    assert found == [f"{tmp_path / 'p.yaml'}:{URL_LINE}:{URL_COLUMN}: "
                     "redis.url bad port in 'h:99999'"]


def test_a_bad_redis_url_in_block_style_points_at_its_line_and_column(tmp_path: Path) -> None:
    old = 'redis: {url: "${REDIS_URL:-}", timeout: 50ms, failure_mode: closed}'
    assert old in BASE
    text = BASE.replace(old, "redis:\n  timeout: 50ms\n  url: redis://h/0/1\n", 1)
    found = problems(write_policy(tmp_path, text, "p.yaml"), {})
    assert found == [f"{tmp_path / 'p.yaml'}:5:8: redis.url the path can only be the database "
                     "number"]


def test_a_good_redis_url_loads(tmp_path: Path) -> None:
    path = write_policy(tmp_path, BASE, "p.yaml")
    url = "rediss://:pw@h:6380/2?ssl_cert_reqs=none"
    assert load_policy(path, {"REDIS_URL": url}).policy.redis.url == url
