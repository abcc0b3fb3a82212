"""TLS termination on the public listener (`server.tls`): certificates chosen by SNI, TLS 1.0
and 1.1 refused, HSTS over TLS, a certificate rotated by a reload while a connection stays
open, the HTTP-to-HTTPS redirect listener, and the policy's certificate checks."""

from __future__ import annotations

import datetime
import http.client
import json
import signal
import socket
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509

from gateway.http.redirect import redirect_answer
from tests.support.metrics import value
from tests.support.policy import problems, write_policy
from tests.support.processes import free_port, start_gateway, stop, wait_until

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tls_termination")]

ROUTES = """\
  - name: everything
    match: {path_prefix: /}
"""


def write_cert(ca: trustme.CA, folder: Path, stem: str, *names: str) -> tuple[Path, Path]:
    issued = ca.issue_cert(*names)
    cert, key = folder / f"{stem}.pem", folder / f"{stem}.key"
    issued.private_key_and_cert_chain_pem.write_to_path(cert)
    issued.private_key_pem.write_to_path(key)
    return cert, key


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def peer_names(port: int, context: ssl.SSLContext, server_name: str | None) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=server_name) as tls:
        der = tls.getpeercert(binary_form=True)
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, upstream):
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    a = write_cert(ca, folder, "a", "a.test")
    b = write_cert(ca, folder, "b", "b.test", "*.b.test")
    redirect_port = free_port()
    extra = f"""\
tls:
  certificates:
    - {{cert: {a[0]}, key: {a[1]}}}
    - {{cert: {b[0]}, key: {b[1]}}}
redirect_http: 127.0.0.1:{redirect_port}
"""
    headers = """\
headers:
  default:
    set: {Strict-Transport-Security: "max-age=31536000"}
"""
    gw = start_gateway(folder, upstream.url, routes=ROUTES, server_extra=extra,
                       top_extra=headers, wait_ready=True)
    yield gw, ca, folder, a, redirect_port
    stop(gw.proc)


def test_the_certificate_is_chosen_by_the_name_the_client_asks_for(site) -> None:
    gw, ca, *_ = site
    context = client_context(ca)
    assert peer_names(gw.port, context, "a.test") == ["a.test"]
    assert peer_names(gw.port, context, "b.test") == ["b.test", "*.b.test"]
    assert peer_names(gw.port, context, "api.b.test") == ["b.test", "*.b.test"]  # wildcard
    no_sni = client_context(ca)
    no_sni.check_hostname = False
    assert peer_names(gw.port, no_sni, None) == ["a.test"]  # the first is the default
    assert value(gw, "gateway_tls_handshakes_total", result="completed") >= 4


def test_requests_over_tls_get_hsts_and_reach_the_upstream(site) -> None:
    gw, ca, *_ = site
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="a.test") as tls:
        tls.sendall(b"GET /echo/secure HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"\r\nStrict-Transport-Security: max-age=31536000" in head
    sent = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert sent["x-forwarded-proto"] == "https"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")  # on purpose
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_1_0_and_1_1_are_refused(site, version: ssl.TLSVersion) -> None:
    gw, ca, *_ = site
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(old)
    old.minimum_version = old.maximum_version = version
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        old.wrap_socket(raw, server_hostname="a.test").close()


def test_a_rotated_certificate_serves_new_connections_and_spares_open_ones(site) -> None:
    gw, ca, _, (cert, key), _ = site
    context = client_context(ca)
    kept = context.wrap_socket(socket.create_connection(("127.0.0.1", gw.port), timeout=5),
                               server_hostname="a.test")
    before = x509.load_der_x509_certificate(kept.getpeercert(binary_form=True)).serial_number
    reloads = value(gw, "gateway_config_reloads_total", result="success") or 0
    rotated = ca.issue_cert("a.test")
    rotated.private_key_and_cert_chain_pem.write_to_path(cert)
    rotated.private_key_pem.write_to_path(key)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: (value(gw, "gateway_config_reloads_total", result="success") or 0)
               > reloads)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="a.test") as fresh:
        after = x509.load_der_x509_certificate(fresh.getpeercert(binary_form=True))
    assert after.serial_number != before
    assert value(gw, "gateway_tls_certificate_expiry_timestamp_seconds",
                 certificate="a.test") == after.not_valid_after_utc.timestamp()
    # the connection opened before the reload still serves requests with its certificate
    kept.sendall(b"GET /echo/kept HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := kept.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    kept.close()


def test_the_plain_listener_redirects_to_https_keeping_host_and_target(site) -> None:
    gw, _, _, _, redirect_port = site
    conn = http.client.HTTPConnection("127.0.0.1", redirect_port, timeout=5)
    conn.request("POST", "/api/x?y=1", body=b"z", headers={"Host": "A.test:80"})
    response = conn.getresponse()
    assert response.status == 308
    assert response.headers["Location"] == f"https://a.test:{gw.port}/api/x?y=1"
    conn.close()


@pytest.mark.unit
@pytest.mark.parametrize(("head", "status"), [
    (b"GET http://evil/x HTTP/1.1\r\nHost: a.test", b"400"),  # absolute form
    (b"GET /x HTTP/1.1", b"400"),  # no Host
    (b"GET /x HTTP/1.1\r\nHost: a.test\r\nHost: b.test", b"400"),
    (b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\nLocation: evil", b"308"),
    (b"GET /x HTTP/1.1\r\nHost: a.test\rX-Evil: 1", b"400"),
])
def test_the_redirect_never_echoes_an_odd_host_or_target(head: bytes, status: bytes) -> None:
    answer = redirect_answer(head, 443)
    assert answer.split(b" ")[1] == status
    if status == b"308":
        assert b"Location: https://a.test/x\r\n" in answer


def test_an_expired_or_unreadable_certificate_is_a_policy_error(tmp_path: Path) -> None:
    ca = trustme.CA()
    old = ca.issue_cert("old.test", not_after=datetime.datetime(2020, 1, 1,
                                                               tzinfo=datetime.UTC))
    old.private_key_and_cert_chain_pem.write_to_path(tmp_path / "old.pem")
    old.private_key_pem.write_to_path(tmp_path / "old.key")
    path = write_policy(tmp_path, """\
version: 1
server:
  tls:
    certificates:
      - {cert: old.pem, key: old.key}
      - {cert: missing.pem, key: old.key}
upstream: {url: "http://127.0.0.1:9"}
routes: [{name: all, match: {path_prefix: /}}]
""")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:5:16: server.tls.certificates[0].cert: "
                              f"{tmp_path}/old.pem expired on 2020-01-01")


def test_sslyze_finds_no_weak_protocol_or_cipher(site) -> None:
    """A scanner someone else wrote (sslyze) against the listener: nothing below TLS 1.2, and
    every TLS 1.2 suite with forward secrecy and an AEAD cipher."""
    from sslyze import (
        ScanCommand,
        Scanner,
        ServerNetworkConfiguration,
        ServerNetworkLocation,
        ServerScanRequest,
    )

    gw, *_ = site
    commands = {ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES,
                ScanCommand.TLS_1_0_CIPHER_SUITES, ScanCommand.TLS_1_1_CIPHER_SUITES,
                ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES}
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(
        server_location=ServerNetworkLocation("a.test", gw.port, ip_address="127.0.0.1"),
        network_configuration=ServerNetworkConfiguration("a.test"),
        scan_commands=commands)])
    [result] = list(scanner.get_results())
    scans = result.scan_result
    assert scans is not None, result.connectivity_error_trace

    def accepted(attempt) -> list[str]:
        assert attempt.result is not None, attempt.error_trace
        return [s.cipher_suite.name for s in attempt.result.accepted_cipher_suites]

    for old in (scans.ssl_2_0_cipher_suites, scans.ssl_3_0_cipher_suites,
                scans.tls_1_0_cipher_suites, scans.tls_1_1_cipher_suites):
        assert accepted(old) == []
    tls12 = accepted(scans.tls_1_2_cipher_suites)
    assert tls12 and all("_ECDHE_" in name or "_DHE_" in name for name in tls12), tls12
    assert all("GCM" in name or "CHACHA20" in name for name in tls12), tls12
    assert accepted(scans.tls_1_3_cipher_suites)
