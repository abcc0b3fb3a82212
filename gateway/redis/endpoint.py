"""Where Redis is: `redis.url` parsed into an Endpoint, checked at load time.

    redis://[[user]:password@]host[:port][/db]
    rediss://...                       TLS; ?ssl_ca_certs=, ssl_certfile=, ssl_keyfile=,
                                       ssl_cert_reqs=none|optional|required, ssl_check_hostname=
    unix:///path/redis.sock[?db=N]
    redis+sentinel://[:password@]host:port[,host:port]/service[/db]
    redis+cluster://[:password@]host:port[,host:port]

The query parameters are those of redis-py's URLs, so an operator's existing URL keeps its
meaning; any other parameter is refused rather than silently ignored.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

TLS_PARAMS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
              "ssl_check_hostname")
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
             "required": ssl.CERT_REQUIRED}
# as redis-py reads them (its to_bool), less the values it would read as true by accident
BOOLEANS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
            "false": False, "f": False, "no": False, "n": False, "0": False}


@dataclass(frozen=True, slots=True)
class Endpoint:
    kind: str  # standalone | sentinel | cluster
    hosts: tuple[tuple[str, int], ...] = ()  # standalone: one; sentinel/cluster: the seeds
    path: str = ""  # unix socket
    db: int = 0
    username: str | None = None
    password: str | None = None
    service: str = ""  # sentinel: the master's name
    tls: tuple[tuple[str, str], ...] | None = None  # rediss: the ssl_* parameters given

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for rediss:// (verifying, like redis-py's default); else None."""
        if self.tls is None:
            return None
        params = dict(self.tls)
        context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
        context.check_hostname = BOOLEANS[params.get("ssl_check_hostname", "true").lower()]
        mode = CERT_REQS[params.get("ssl_cert_reqs", "required")]
        if mode == ssl.CERT_NONE:
            context.check_hostname = False
        context.verify_mode = mode
        if "ssl_certfile" in params:
            context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
        return context


def _host_port(item: str, default_port: int | None) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]` or `[v6]:port`."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 address in {item!r}")
        port = rest[1:]
        has_port = bool(rest)
    else:
        host, colon, port = item.partition(":")
        has_port = bool(colon)
        if ":" in port:
            raise ValueError(f"{item!r}: an IPv6 address needs brackets, and a host one port")
    host = unquote(host)  # as redis-py does: `%31%32%37.0.0.1`, `[fe80::1%25eth0]`
    if not host:
        raise ValueError(f"{item!r} needs a host")
    try:  # what the connect would do: a name with an empty or over-long label fails here
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{host!r} is not a valid host name") from None
    if not has_port:
        if default_port is None:
            raise ValueError(f"{item!r} needs a port")
        return host, default_port
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {item!r}")
    return host, int(port)


def _db(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"database must be a number, not {text!r}")
    return int(text)


def parse(url: str) -> Endpoint:
    """The Endpoint of a redis.url; ValueError with a one-line reason when it is unusable."""
    parts = urlsplit(url)
    scheme = url.partition("://")[0]  # as written: REDIS:// is not a scheme here
    if scheme not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        raise ValueError("must start with redis://, rediss://, unix://, redis+sentinel:// "
                         "or redis+cluster://")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = dict(pairs)
    if len(query) < len(pairs):  # redis-py would take the first, a dict the last: neither
        twice = next(k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i]))
        raise ValueError(f"parameter {twice!r} is given twice")
    allowed = {"db"} if scheme in ("unix", "redis", "rediss") else set()
    if scheme == "rediss":
        allowed.update(TLS_PARAMS)
    unknown = sorted(set(query) - allowed)
    if unknown:
        raise ValueError(f"unsupported parameter {unknown[0]!r}"
                         + (f" (supported: {', '.join(sorted(allowed))})" if allowed else ""))
    if "ssl_cert_reqs" in query and query["ssl_cert_reqs"] not in CERT_REQS:
        raise ValueError("ssl_cert_reqs must be none, optional or required")
    if ("ssl_check_hostname" in query
            and query["ssl_check_hostname"].lower() not in BOOLEANS):
        raise ValueError("ssl_check_hostname must be true or false")
    if "ssl_keyfile" in query and "ssl_certfile" not in query:
        raise ValueError("ssl_keyfile needs ssl_certfile")
    username = unquote(parts.username) if parts.username else None
    # a user with an empty password still authenticates (an ACL `nopass` user)
    password = unquote(parts.password or "") if parts.password or username else None
    netloc = parts.netloc.rpartition("@")[2]
    db = _db(query["db"]) if "db" in query else 0
    if scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, e.g. unix:///run/redis.sock")
        return Endpoint("standalone", path=unquote(parts.path), db=db, username=username,
                        password=password)

    path = [unquote(p) for p in parts.path.split("/")[1:]] if parts.path else []
    if path and path[-1] == "":  # one trailing slash
        path.pop()
    if "" in path:
        raise ValueError("empty segment in the path")
    if scheme in ("redis", "rediss"):
        if not netloc:
            raise ValueError("needs a host")
        if len(path) > 1:
            raise ValueError("the path can only be the database number")
        if path and "db" in query:
            raise ValueError("the database is given twice (path and ?db=)")
        if path:
            db = _db(path[0])
        tls = tuple((k, v) for k, v in query.items() if k in TLS_PARAMS)
        return Endpoint("standalone", hosts=(_host_port(netloc, 6379),), db=db,
                        username=username, password=password,
                        tls=tls if scheme == "rediss" else None)
    hosts = tuple(_host_port(item, None) for item in netloc.split(",") if item)
    if not hosts:
        raise ValueError("needs at least one host:port")
    if scheme == "redis+cluster":
        if path:
            raise ValueError("a cluster URL has no path (Redis Cluster has one database)")
        return Endpoint("cluster", hosts=hosts, username=username, password=password)
    if not path:
        raise ValueError("redis+sentinel:// needs /service_name")
    if len(path) > 2:
        raise ValueError("the path is /service_name[/db]")
    return Endpoint("sentinel", hosts=hosts, db=_db(path[1]) if len(path) > 1 else 0,
                    username=username, password=password, service=path[0])
