"""TLS to the upstream (`upstream.tls`): a private CA trusted by the policy, mutual TLS with
the gateway's own certificate, an unknown CA or a missing client certificate refused with 502,
and the policy's TLS files checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from tests.support.client import request
from tests.support.metrics import value
from tests.support.policy import problems, write_policy
from tests.support.processes import start_gateway, start_upstream, stop


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA, the upstream's certificate for 127.0.0.1, the gateway's client
    certificate, and an unrelated CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("gateway.internal")
    files = {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem",
             "server_cert": folder / "server.pem", "server_key": folder / "server.key",
             "client_cert": folder / "client.pem", "client_key": folder / "client.key"}
    ca.cert_pem.write_to_path(files["ca"])
    other.cert_pem.write_to_path(files["other_ca"])
    server.cert_chain_pems[0].write_to_path(files["server_cert"])
    server.private_key_pem.write_to_path(files["server_key"])
    client.cert_chain_pems[0].write_to_path(files["client_cert"])
    client.private_key_pem.write_to_path(files["client_key"])
    return files


@pytest.fixture(scope="module")
def mutual(pki: dict[str, Path]):
    """An upstream on TLS that requires a client certificate from the private CA."""
    up = start_upstream("--tls-cert", str(pki["server_cert"]), "--tls-key",
                        str(pki["server_key"]), "--client-ca", str(pki["ca"]))
    yield up
    stop(up.proc)


def tls_block(**files: Path) -> str:
    return "tls:\n" + "".join(f"  {key}: {path}\n" for key, path in files.items())


@pytest.mark.integration
def test_a_private_ca_and_the_gateways_certificate_reach_a_mutual_tls_upstream(
        tmp_path: Path, pki: dict[str, Path], mutual) -> None:
    url = f"https://127.0.0.1:{mutual.port}"
    trusted = start_gateway(tmp_path, url, upstream_extra=tls_block(
        ca=pki["ca"], cert=pki["client_cert"], key=pki["client_key"]))
    no_client_cert = start_gateway(tmp_path, url, upstream_extra=tls_block(ca=pki["ca"]))
    unknown_ca = start_gateway(tmp_path, url, upstream_extra=tls_block(ca=pki["other_ca"]))
    try:
        ok = request(trusted.port, "GET", "/echo/over-tls")
        assert ok.status == 200 and ok.json()["raw_path"] == "/echo/over-tls"  # TLS only
        for gw in (no_client_cert, unknown_ca):
            refused = request(gw.port, "GET", "/echo/x")
            assert refused.status == 502, refused.body
            assert refused.headers["Content-Type"] == "application/problem+json"
        # the gateway refuses an unknown CA in its handshake (a connect failure: the GET is
        # tried twice, upstream.retries being 1); under TLS 1.3 the upstream refuses a missing
        # client certificate after the gateway's side of the handshake completed
        assert value(unknown_ca, "gateway_upstream_errors_total", upstream=url,
                     kind="connect") == 2
        assert value(no_client_cert, "gateway_upstream_errors_total", upstream=url,
                     kind="reset") == 1
    finally:
        for gw in (trusted, no_client_cert, unknown_ca):
            stop(gw.proc)


BASE = """\
version: 1
routes:
  - {name: all, match: {path_prefix: /}}
"""


def test_tls_files_are_checked_at_load(tmp_path: Path, pki: dict[str, Path]) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    path = write_policy(tmp_path, BASE + f"""\
upstream:
  url: https://127.0.0.1:9
  tls: {{ca: junk.pem, cert: {pki["client_cert"]}, key: {pki["server_key"]}}}
""")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:6:13: upstream.tls.ca: {tmp_path}/junk.pem is not a "
                              "PEM CA bundle")
    mismatched = write_policy(tmp_path, BASE + f"""\
upstream:
  url: https://127.0.0.1:9
  tls: {{ca: {pki["ca"]}, cert: {pki["client_cert"]}, key: {pki["server_key"]}}}
""", name="mismatch.yaml")
    [problem] = problems(mismatched)
    assert f"{mismatched}:6:" in problem and "upstream.tls.cert: cannot use" in problem
    plain = write_policy(tmp_path, BASE + f"""\
upstream:
  url: http://127.0.0.1:9
  tls: {{ca: {pki["ca"]}, cert: {pki["client_cert"]}}}
""", name="plain.yaml")
    assert problems(plain) == [
        f"{plain}:6:8: upstream.tls: 'cert' and 'key' go together (mutual TLS)"]
