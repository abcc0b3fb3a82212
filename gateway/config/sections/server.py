"""Reads the `server` section (listeners, trusted proxies, timeouts, limits, path matching)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import re
import ssl
from pathlib import Path

import yaml

from gateway.config.reader import Reader, checked_names
from gateway.settings import path_matching
from gateway.settings.policy import (
    Address,
    Certificate,
    ServerLimits,
    ServerSettings,
    ServerTimeouts,
    ServerTls,
)
from gateway.tokens import TOKEN

_PORT = re.compile(r"[0-9]{1,5}")
# what the gateway sets on every forwarded request: not removable as a client's claim
_GATEWAY_SET = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                          "x-real-ip", "x-request-id", "forwarded", "via"})

KEYS = {
    "server": ("listen", "admin_listen", "workers", "trusted_proxies", "timeouts", "limits",
               "watch", "watch_interval", "path_matching", "client_identity_headers", "tls",
               "redirect_http"),
    "server.tls": ("certificates", "min_version"),
    "server.tls.certificates[]": ("cert", "key"),
    "server.timeouts": ("header", "idle", "body", "shutdown"),
    "server.limits": ("max_body_size", "max_header_size", "max_headers",
                      "max_websocket_message", "max_connections", "max_requests_in_progress"),
    "server.path_matching": ("case_sensitive", "trailing_slash", "path_parameters",
                             "trailing_dots"),
}


def _address(r: Reader, node: yaml.Node, what: str) -> Address | None:
    text = r.string(node, what)
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
        r.error(node, f"{what} must be HOST:PORT (for example 0.0.0.0:8080 or [::1]:8080)")
        return None
    bracketed = host.startswith("[") and host.endswith("]")
    if ":" in host and not bracketed:
        r.error(node, f"{what}: write an IPv6 address in brackets, e.g. [::1]:8080")
        return None
    host = host[1:-1] if bracketed else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            r.error(node, f"{what}: {host!r} is not an IP address")
            return None
    return Address(host, int(port))


def read_server(r: Reader, node: yaml.Node) -> ServerSettings | None:
    m = r.mapping(node, KEYS["server"], "server")
    if m is None:
        return None
    d = ServerSettings()
    listen = _address(r, m["listen"], "server.listen") if "listen" in m else d.listen
    admin = _address(r, m["admin_listen"], "server.admin_listen") if "admin_listen" in m \
        else d.admin_listen
    workers = r.integer(m["workers"], "server.workers", 1, 256) if "workers" in m else d.workers
    trusted = d.trusted_proxies
    if "trusted_proxies" in m:
        nets = []
        for item, text in _cidr_items(r, m["trusted_proxies"], "server.trusted_proxies"):
            try:
                nets.append(ipaddress.ip_network(text, strict=True))
            except ValueError as exc:
                r.error(item, f"server.trusted_proxies: {text!r} is not a CIDR ({exc})")
        trusted = tuple(nets)
    timeouts = d.timeouts
    if "timeouts" in m:
        tm = r.mapping(m["timeouts"], KEYS["server.timeouts"], "server.timeouts")
        if tm is not None:
            values = {k: r.duration(v, f"server.timeouts.{k}") for k, v in tm.items()}
            timeouts = ServerTimeouts(**{k: v for k, v in values.items() if v is not None})
    limits = d.limits
    if "limits" in m:
        lm = r.mapping(m["limits"], KEYS["server.limits"], "server.limits")
        if lm is not None:
            values = {}
            for key in ("max_body_size", "max_header_size", "max_websocket_message"):
                if key in lm:
                    values[key] = r.size(lm[key], f"server.limits.{key}")
            if "max_headers" in lm:
                values["max_headers"] = r.integer(lm["max_headers"], "server.limits.max_headers",
                                                  1, 1000)
            for key in ("max_connections", "max_requests_in_progress"):
                if key in lm:
                    values[key] = r.integer(lm[key], f"server.limits.{key}", 1, 1_000_000)
            limits = ServerLimits(**{k: v for k, v in values.items() if v is not None})
    watch = r.boolean(m["watch"], "server.watch") if "watch" in m else d.watch
    interval = r.duration(m["watch_interval"], "server.watch_interval") \
        if "watch_interval" in m else d.watch_interval
    matching = _path_matching(r, m["path_matching"]) if "path_matching" in m \
        else d.path_matching
    identity = d.client_identity_headers
    if "client_identity_headers" in m:
        what = "server.client_identity_headers"
        listed = r.string_list(m["client_identity_headers"], what)
        identity = checked_names(r, listed, what, TOKEN, "a header name")
        for item, text in listed or ():
            if text.lower() in _GATEWAY_SET:
                r.error(item, f"server.client_identity_headers: {text} is set by the gateway "
                        "itself (see server.trusted_proxies)")
                identity = None
    tls = _tls(r, m["tls"]) if "tls" in m else None
    redirect = _address(r, m["redirect_http"], "server.redirect_http") \
        if "redirect_http" in m else None
    if "redirect_http" in m and redirect is not None and "tls" not in m:
        r.error(m["redirect_http"], "server.redirect_http sends clients to https: it needs "
                "server.tls")
        redirect = None
    if listen is None or admin is None or workers is None or watch is None or interval is None \
            or matching is None or identity is None or ("tls" in m and tls is None) \
            or ("redirect_http" in m and redirect is None):
        return None
    if _same_socket(listen, admin):
        r.error(m.get("admin_listen", node), f"server.admin_listen {admin} and server.listen "
                f"{listen} would use the same port; give the admin listener a port of its own")
    return ServerSettings(listen=listen, admin_listen=admin, workers=workers,
                          trusted_proxies=trusted, timeouts=timeouts, limits=limits,
                          watch=watch, watch_interval=interval, path_matching=matching,
                          client_identity_headers=identity, tls=tls, redirect_http=redirect)


def _tls(r: Reader, node: yaml.Node) -> ServerTls | None:
    m = r.mapping(node, KEYS["server.tls"], "server.tls")
    if m is None:
        return None
    if "certificates" not in m:
        r.error(node, "server.tls needs 'certificates' (a list of {cert, key})")
        return None
    min_version = r.string(m["min_version"], "server.tls.min_version") \
        if "min_version" in m else "1.2"
    if min_version not in (None, "1.2", "1.3"):
        r.error(m["min_version"], f"server.tls.min_version must be \"1.2\" or \"1.3\" (TLS 1.0 "
                f"and 1.1 are broken: RFC 8996); got {min_version!r}")
        min_version = None
    certificates = []
    for i, item in enumerate(r.sequence(m["certificates"], "server.tls.certificates") or ()):
        certificate = _certificate(r, item, f"server.tls.certificates[{i}]")
        if certificate is None:
            return None
        certificates.append(certificate)
    if not certificates:
        r.error(m["certificates"], "server.tls.certificates must list at least one")
        return None
    if min_version is None:
        return None
    return ServerTls(certificates=tuple(certificates), min_version=min_version)


def _certificate(r: Reader, node: yaml.Node, where: str) -> Certificate | None:
    """One {cert, key}: readable, a key that matches, not expired; its names for SNI."""
    m = r.mapping(node, KEYS["server.tls.certificates[]"], where)
    if m is None:
        return None
    if "cert" not in m or "key" not in m:
        r.error(node, f"{where} needs 'cert' and 'key' (PEM files)")
        return None
    paths = {}
    digest = hashlib.sha256()
    for key in ("cert", "key"):
        name = r.string(m[key], f"{where}.{key}")
        if name is None:
            return None
        path = Path(m[key].start_mark.name).parent / name
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            r.error(m[key], f"{where}.{key}: cannot read {path}: {exc.strerror}")
            return None
        paths[key] = path
    from cryptography import x509  # only for a policy with TLS: ~40 ms to import
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            paths["cert"], paths["key"])
        leaf = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
    except (ssl.SSLError, ValueError) as exc:
        r.error(m["cert"], f"{where}: cannot use {paths['cert']} with {paths['key']} "
                f"({getattr(exc, 'reason', None) or exc})")
        return None
    not_after = leaf.not_valid_after_utc
    if not_after <= datetime.datetime.now(datetime.UTC):
        r.error(m["cert"], f"{where}.cert: {paths['cert']} expired on "
                f"{not_after.isoformat(timespec='seconds')}")
        return None
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [n.lower() for n in san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return Certificate(cert=str(paths["cert"]), key=str(paths["key"]), names=tuple(names),
                       not_after=not_after.timestamp(), digest=digest.hexdigest())


def _cidr_items(r: Reader, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]]:
    """CIDRs from a list, or from one string (`${TRUSTED_PROXIES}`: comma- or space-separated,
    or `none`)."""
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        words = node.value.replace(",", " ").split()
        if not words:  # an empty ${TRUSTED_PROXIES} must not silently mean "no proxy"
            r.error(node, f"{what} is empty: list CIDRs, or write `none` to trust no proxy")
        return [] if words == ["none"] else [(node, w) for w in words]
    return r.string_list(node, what) or []


def _same_socket(a: Address, b: Address) -> bool:
    """Whether two listeners would collide: one port, and one address or a wildcard."""
    if a.port != b.port:
        return False
    ips = [ipaddress.ip_address("127.0.0.1" if h == "localhost" else h) for h in (a.host, b.host)]
    return ips[0] == ips[1] or ips[0].is_unspecified or ips[1].is_unspecified


def _path_matching(r: Reader, node: yaml.Node) -> path_matching.PathMatching | None:
    m = r.mapping(node, KEYS["server.path_matching"], "server.path_matching")
    if m is None:
        return None
    d = path_matching.DEFAULT
    values: dict[str, object] = {}
    if "case_sensitive" in m:
        values["case_sensitive"] = r.boolean(m["case_sensitive"],
                                             "server.path_matching.case_sensitive")
    choices = {"trailing_slash": ("strict", "ignore"),
               "path_parameters": path_matching.CHOICES, "trailing_dots": path_matching.CHOICES}
    for key, allowed in choices.items():
        if key in m:
            value = r.string(m[key], f"server.path_matching.{key}")
            if value is not None and value not in allowed:
                r.error(m[key], f"server.path_matching.{key} must be one of "
                        f"{', '.join(allowed)}; got {value!r}")
                value = None
            values[key] = value
    if None in values.values():
        return None
    return path_matching.PathMatching(**{**{k: getattr(d, k) for k in KEYS[
        "server.path_matching"]}, **values})
