"""TLS termination on the public listener: the SSL context, certificates chosen by SNI, and
certificates replaced on reload without touching open connections.

The listener is created once with a front context; its SNI callback hands each new handshake
the context of the certificate it asked for (exact name, then a `*.` wildcard one label deep,
else the first certificate). A reload swaps the table the callback reads: connections already
open keep the certificate they were made with, the next handshake gets the new one. The front
context fixes the protocol floor (TLS 1.2 or 1.3) and the ciphers (Mozilla's "intermediate"
list for TLS 1.2; TLS 1.3 suites are OpenSSL's), ALPN `http/1.1`; a change of
`min_version` applies after a restart, like a change of `listen`.
"""

from __future__ import annotations

import logging
import ssl

from gateway.observability.metrics import TLS_CERT_EXPIRY, TLS_HANDSHAKES
from gateway.settings.policy import Certificate, ServerTls

log = logging.getLogger("gateway.tls")

# Mozilla's "intermediate" configuration (v5.7), TLS 1.2 ciphers: forward secrecy, AEAD only
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305"))
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _context(certificate: Certificate, min_version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    context.load_cert_chain(certificate.cert, certificate.key)
    return context


class ListenerTls:
    """The public listener's TLS: `front` goes to create_server once; `update` on reload."""

    def __init__(self, tls: ServerTls) -> None:
        self.min_version = tls.min_version
        self.front = _context(tls.certificates[0], tls.min_version)
        self.front.sni_callback = self._choose
        self._default = self.front
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._wildcards: dict[str, ssl.SSLContext] = {}
        self.update(tls)

    def update(self, tls: ServerTls) -> None:
        """Certificates of a reloaded policy, for the handshakes from now on."""
        if tls.min_version != self.min_version:
            log.warning("server.tls.min_version changed; it applies after a restart")
        contexts = [_context(c, self.min_version) for c in tls.certificates]
        by_name: dict[str, ssl.SSLContext] = {}
        wildcards: dict[str, ssl.SSLContext] = {}
        for certificate, context in zip(tls.certificates, contexts, strict=True):
            for name in certificate.names:
                table = wildcards if name.startswith("*.") else by_name
                table.setdefault(name.removeprefix("*."), context)  # the first listed wins
            TLS_CERT_EXPIRY.labels(certificate.names[0] if certificate.names
                                   else certificate.cert).set(certificate.not_after)
        self._default, self._by_name, self._wildcards = contexts[0], by_name, wildcards

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None,
                _: ssl.SSLContext) -> None:
        TLS_HANDSHAKES.labels("started").inc()
        context = self._default
        if server_name:
            name = server_name.lower()
            context = self._by_name.get(name) or self._wildcards.get(
                name.partition(".")[2]) or self._default
        ssl_object.context = context
