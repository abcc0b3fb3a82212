"""Reads the `upstream` section (targets, timeouts, pool and its budgets)."""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path

import yaml
from yarl import URL

from gateway.config.reader import Reader, named_mapping
from gateway.settings.policy import (
    HealthCheck,
    UpstreamSettings,
    UpstreamTarget,
    UpstreamTls,
)

_PORT = re.compile(r"[0-9]{1,5}")
_URL_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?")

_UPSTREAM_KEYS = ("url", "targets", "timeouts", "max_connections", "retries", "preserve_host",
                  "pool_timeout", "max_websockets", "max_websockets_per_client",
                  "max_streaming_bodies", "max_streaming_bodies_per_client", "request_buffer",
                  "tls", "balance", "health", "passive_health")
_SUB_KEYS = {
    "timeouts": ("connect", "read"),
    "tls": ("ca", "cert", "key"),
    "health": ("path", "interval", "timeout", "healthy", "unhealthy"),
    "passive_health": ("failures", "back_off"),
}
KEYS = {
    "upstream": _UPSTREAM_KEYS,
    **{f"upstream.{key}": keys for key, keys in _SUB_KEYS.items()},
    "upstreams.*": _UPSTREAM_KEYS,
    **{f"upstreams.*.{key}": keys for key, keys in _SUB_KEYS.items()},
}
_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,62}")


def _target(r: Reader, node: yaml.Node, what: str) -> UpstreamTarget | None:
    text = r.string(node, what)
    if text is None:
        return None
    try:
        url = URL(text)
    except ValueError as exc:
        r.error(node, f"{what}: {text!r} is not a URL ({exc})")
        return None
    authority = text.partition("://")[2].partition("/")[0]
    if authority.startswith("["):
        host_text, _, rest = authority.partition("]")
        host_text += "]"
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else "junk")
    elif ":" in authority:
        host_text, _, port_text = authority.rpartition(":")
    else:
        host_text, port_text = authority, ""
    if (port_text and not _PORT.fullmatch(port_text)) or not _URL_HOST.fullmatch(host_text):
        r.error(node, f"{what} must be scheme://host[:port] with a plain host name or IP "
                f"address, got {text!r}")
        return None
    if url.scheme not in ("http", "https") or not url.host:
        r.error(node, f"{what} must be an http:// or https:// URL with a host, got {text!r}")
        return None
    if url.explicit_port == 0:
        r.error(node, f"{what}: port 0 is not a port to connect to")
        return None
    if url.path not in ("", "/") or url.query_string or url.fragment or url.user:
        r.error(node, f"{what} must be scheme://host[:port] only (no path, query or userinfo)")
        return None
    # raw_host: the ASCII (punycode) form; url.host would decode it for the Host header
    port = url.port or (443 if url.scheme == "https" else 80)
    return UpstreamTarget(url.scheme, url.raw_host, port)


def _tls(r: Reader, node: yaml.Node, where: str, section: str) -> UpstreamTls | None:
    """`upstream.tls`, each file read and the context built now: a bad CA bundle or a
    certificate that does not match its key is a policy error, not a 502 at the first request."""
    m = r.mapping(node, KEYS[f"{section}.tls"], f"{where}.tls")
    if m is None:
        return None
    if ("cert" in m) != ("key" in m):
        r.error(node, f"{where}.tls: 'cert' and 'key' go together (mutual TLS)")
        return None
    paths: dict[str, str] = {}
    digest = hashlib.sha256()
    for key, value in m.items():
        name = r.string(value, f"{where}.tls.{key}")
        if name is None:
            return None
        path = Path(value.start_mark.name).parent / name
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            r.error(value, f"{where}.tls.{key}: cannot read {path}: {exc.strerror}")
            return None
        paths[key] = str(path)
    try:
        context = ssl.create_default_context(cafile=paths.get("ca"))
    except ssl.SSLError as exc:
        r.error(m["ca"], f"{where}.tls.ca: {paths['ca']} is not a PEM CA bundle ({exc})")
        return None
    if "cert" in paths:
        try:
            context.load_cert_chain(paths["cert"], paths["key"])
        except ssl.SSLError as exc:
            r.error(m["cert"], f"{where}.tls.cert: cannot use {paths['cert']} with "
                    f"{paths['key']} ({exc.reason or exc})")
            return None
    return UpstreamTls(ca=paths.get("ca"), cert=paths.get("cert"), key=paths.get("key"),
                       digest=digest.hexdigest())


def _health(r: Reader, node: yaml.Node, where: str, section: str) -> HealthCheck | None:
    m = r.mapping(node, KEYS[f"{section}.health"], f"{where}.health")
    if m is None:
        return None
    if "path" not in m:
        r.error(node, f"{where}.health needs a 'path' to GET (e.g. /health)")
        return None
    path = r.string(m["path"], f"{where}.health.path")
    if path is not None and not path.startswith("/"):
        r.error(m["path"], f"{where}.health.path must start with '/'")
        path = None
    d = HealthCheck(path="/")
    interval = r.duration(m["interval"], f"{where}.health.interval") \
        if "interval" in m else d.interval
    timeout = r.duration(m["timeout"], f"{where}.health.timeout") \
        if "timeout" in m else d.timeout
    healthy = r.integer(m["healthy"], f"{where}.health.healthy", 1, 100) \
        if "healthy" in m else d.healthy
    unhealthy = r.integer(m["unhealthy"], f"{where}.health.unhealthy", 1, 100) \
        if "unhealthy" in m else d.unhealthy
    if None in (path, interval, timeout, healthy, unhealthy):
        return None
    return HealthCheck(path=path, interval=interval, timeout=timeout, healthy=healthy,
                       unhealthy=unhealthy)


def _passive(r: Reader, node: yaml.Node, where: str, section: str) -> dict[str, object] | None:
    m = r.mapping(node, KEYS[f"{section}.passive_health"], f"{where}.passive_health")
    if m is None:
        return None
    d = UpstreamSettings(targets=())
    failures = r.integer(m["failures"], f"{where}.passive_health.failures", 0, 100) \
        if "failures" in m else d.eject_after
    back_off = r.duration(m["back_off"], f"{where}.passive_health.back_off") \
        if "back_off" in m else d.eject_for
    if failures is None or back_off is None:
        return None
    return {"eject_after": failures, "eject_for": back_off}


def read_upstreams(r: Reader, node: yaml.Node) -> dict[str, UpstreamSettings]:
    """`upstreams`: named upstreams that routes choose with `upstream: NAME`."""
    out: dict[str, UpstreamSettings] = {}
    for name, value in named_mapping(r, node, "upstreams", "upstreams").items():
        if not _NAME.fullmatch(name):
            r.error(value, f"upstream name {name!r} must be lower-case letters, digits, '-' "
                    "or '_'")
            continue
        settings = read_upstream(r, value, f"upstreams.{name}", "upstreams.*", name)
        if settings is not None:
            out[name] = settings
    return out


def read_upstream(r: Reader, node: yaml.Node, where: str = "upstream",
                  section: str = "upstream", name: str = "default") -> UpstreamSettings | None:
    m = r.mapping(node, KEYS[section], where)
    if m is None:
        return None
    targets: list[UpstreamTarget] = []
    if ("url" in m) == ("targets" in m):
        r.error(node, f"{where} needs exactly one of 'url' or 'targets'")
    elif "url" in m:
        t = _target(r, m["url"], f"{where}.url")
        targets = [t] if t else []
    else:
        for item in r.sequence(m["targets"], f"{where}.targets") or ():
            t = _target(r, item, f"each entry of {where}.targets")
            if t:
                targets.append(t)
        if not targets:
            r.error(m["targets"], f"{where}.targets must list at least one URL")
    d = UpstreamSettings(targets=())
    values: dict[str, object] = {}
    if "timeouts" in m:
        tm = r.mapping(m["timeouts"], KEYS[f"{section}.timeouts"], f"{where}.timeouts")
        for key, value in (tm or {}).items():
            values[f"{key}_timeout"] = r.duration(value, f"{where}.timeouts.{key}")
    if "max_connections" in m:
        values["max_connections"] = r.integer(m["max_connections"], f"{where}.max_connections",
                                              1, 100_000)
    if "retries" in m:
        values["retries"] = r.integer(m["retries"], f"{where}.retries", 0, 10)
    if "preserve_host" in m:
        values["preserve_host"] = r.boolean(m["preserve_host"], f"{where}.preserve_host")
    if "pool_timeout" in m:
        values["pool_timeout"] = r.duration(m["pool_timeout"], f"{where}.pool_timeout")
    for key in ("max_websockets", "max_websockets_per_client", "max_streaming_bodies",
                "max_streaming_bodies_per_client"):
        if key in m:
            values[key] = r.integer(m[key], f"{where}.{key}", 0, 100_000)
    if "request_buffer" in m:
        values["request_buffer"] = r.size(m["request_buffer"], f"{where}.request_buffer")
        if values["request_buffer"] is not None and values["request_buffer"] > 64 * 1024 ** 2:
            r.error(m["request_buffer"], f"{where}.request_buffer is held in memory per "
                    "request: at most 64MiB")
            values["request_buffer"] = None
    if "tls" in m:
        values["tls"] = _tls(r, m["tls"], where, section)
        if values["tls"] is not None and not any(t.scheme == "https" for t in targets):
            r.error(m["tls"], f"{where}.tls applies to https:// targets; none is listed")
    if "balance" in m:
        values["balance"] = r.string(m["balance"], f"{where}.balance")
        if values["balance"] not in (None, "round_robin", "least_connections"):
            r.error(m["balance"], f"{where}.balance must be round_robin or least_connections; "
                    f"got {values['balance']!r}")
            values["balance"] = None
    if "health" in m:
        values["health"] = _health(r, m["health"], where, section)
    passive = _passive(r, m["passive_health"], where, section) \
        if "passive_health" in m else {}
    if not targets or passive is None \
            or any(key in m and values[key] is None for key in ("tls", "balance", "health")):
        return None
    values.update(passive)
    fields = {k: v for k, v in values.items() if v is not None}
    return UpstreamSettings(targets=tuple(targets), **{**_defaults(d), **fields}, name=name)


def _defaults(d: UpstreamSettings) -> dict[str, object]:
    return {"connect_timeout": d.connect_timeout, "read_timeout": d.read_timeout,
            "max_connections": d.max_connections, "retries": d.retries,
            "preserve_host": d.preserve_host, "pool_timeout": d.pool_timeout,
            "max_websockets": d.max_websockets,
            "max_websockets_per_client": d.max_websockets_per_client,
            "max_streaming_bodies": d.max_streaming_bodies,
            "max_streaming_bodies_per_client": d.max_streaming_bodies_per_client,
            "request_buffer": d.request_buffer}
