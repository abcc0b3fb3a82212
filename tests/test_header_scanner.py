"""A third-party header scanner (shcheck, from PyPI) against the gateway running the shipped
production policy: no security header it checks may be missing, and no information-disclosure
header (Server, X-Powered-By, X-AspNet-Version...) may leak from the upstream.

Two variants of production.yaml:
  plain  the shipped file as is; the client is loopback, which is not among its trusted proxies,
         so every request counts as plain HTTP and Strict-Transport-Security must be absent;
  https  a child policy trusting 127.0.0.0/8 as the load balancer, scanned with
         `X-Forwarded-Proto: https`, so Strict-Transport-Security must be present.
shcheck itself never flags a missing HSTS on an http:// URL, so HSTS is asserted from its
"present" report and with our own requests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.client import request
from tests.support.processes import ROOT, Gateway, run_policy_file, run_shipped, stop

# Its tests share module-scoped processes: one worker runs the module, so they are started
# once (spread over workers, each would start its own, and again whenever it came back).
pytestmark = pytest.mark.xdist_group("header_scanner")

PRODUCTION_ENV = {"FRONTEND_URL": "https://app.example.com",
                  "PRODUCTION_URL": "https://www.example.com",
                  "TRUSTED_PROXIES": "10.0.0.0/8"}
HSTS = "Strict-Transport-Security"
HSTS_VALUE = "max-age=63072000; includeSubDomains"
FORWARDED_HTTPS = "X-Forwarded-Proto: https"
# The non-deprecated security headers shcheck 1.7 checks; each must come back in its report.
SCANNED = {"X-Frame-Options", "X-Content-Type-Options", "Content-Security-Policy",
           "Referrer-Policy", "Permissions-Policy", "Cross-Origin-Embedder-Policy",
           "Cross-Origin-Resource-Policy", "Cross-Origin-Opener-Policy"}
LEAKY = ("Server", "X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version")
# path, shcheck method options: the site root, the API, an upstream response that carries
# X-Powered-By (/cors-leak), and the gateway's own 405 for TRACE
TARGETS = [("/", ()), ("/", ("-g",)), ("/api/campaigns", ("-g",)), ("/cors-leak", ("-g",)),
           ("/api/campaigns", ("-m", "TRACE"))]
TARGET_IDS = ["root-HEAD", "root-GET", "api-GET", "upstream-x-powered-by-GET", "gateway-405"]
VARIANTS = ("plain", "https")


def scanner_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def shcheck(url: str, *options: str) -> dict:
    """shcheck's JSON report for one URL (information-disclosure section included)."""
    done = subprocess.run(
        [sys.executable, "-m", "shcheck.shcheck", "--json-output", "--information",
         "--colours", "none", *options, url],
        capture_output=True, text=True, timeout=30, env=scanner_env(), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert len(report) == 1, (report, done.stderr)  # shcheck got a response and analysed it
    return next(iter(report.values()))


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, upstream):
    tmp = tmp_path_factory.mktemp("scanner")
    started: dict[str, Gateway] = {}
    try:
        started["plain"] = run_shipped("production.yaml", upstream.url, tmp, env=PRODUCTION_ENV)
        child = tmp / "production-behind-lb.yaml"
        child.write_text(f"extends: {ROOT / 'policies' / 'production.yaml'}\n"
                         "server: {trusted_proxies: [127.0.0.0/8]}\n")
        started["https"] = run_policy_file(child, upstream.url, tmp, env=PRODUCTION_ENV)
        yield started
    finally:
        for gw in started.values():
            stop(gw.proc)


@pytest.fixture(scope="module")
def reports(gateways) -> dict[tuple[str, int], dict]:
    """Every (variant, target) scanned once, concurrently."""
    jobs = {}
    with ThreadPoolExecutor(max_workers=len(VARIANTS) * len(TARGETS)) as pool:
        for variant in VARIANTS:
            extra = ("--add-header", FORWARDED_HTTPS) if variant == "https" else ()
            for i, (path, options) in enumerate(TARGETS):
                url = f"{gateways[variant].url}{path}"
                jobs[variant, i] = pool.submit(shcheck, url, *extra, *options)
        return {key: job.result() for key, job in jobs.items()}


CASES = [pytest.param(variant, i, id=f"{variant}-{TARGET_IDS[i]}")
         for variant in VARIANTS for i in range(len(TARGETS))]


@pytest.mark.parametrize(("variant", "target"), CASES)
def test_scanner_reports_no_information_disclosure(reports, variant: str, target: int) -> None:
    assert reports[variant, target]["information_disclosure"] == {}


@pytest.mark.parametrize(("variant", "target"), CASES)
def test_scanner_sees_hsts_only_over_https(reports, variant: str, target: int) -> None:
    present = reports[variant, target]["present"]
    if variant == "https":
        assert present.get(HSTS) == HSTS_VALUE
    else:
        assert HSTS not in present


@pytest.mark.parametrize(("variant", "target"), CASES)
def test_scanner_reports_no_missing_security_header(reports, variant: str, target: int) -> None:
    report = reports[variant, target]
    # shcheck drops X-Frame-Options from its list when the CSP has frame-ancestors
    assert SCANNED - {"X-Frame-Options"} <= set(report["present"]) | set(report["missing"])
    assert report["missing"] == []


# -- the same facts with our own requests ----------------------------------------------------------


def test_upstream_really_sends_what_must_be_removed(upstream) -> None:
    assert request(upstream.port, "GET", "/").headers["Server"].startswith("Python/")
    leak = request(upstream.port, "GET", "/cors-leak")
    assert leak.headers["X-Powered-By"] == "Express"
    assert "Server" in leak.headers


def test_scanner_flags_the_bare_upstream(upstream) -> None:
    """Control: the same scan straight at the upstream does report the leaks and gaps."""
    report = shcheck(f"{upstream.url}/cors-leak", "-g")
    assert set(report["information_disclosure"]) == {"Server", "X-Powered-By"}
    assert "Content-Security-Policy" in report["missing"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("path", ["/", "/api/campaigns", "/cors-leak"])
def test_gateway_removes_server_and_powered_by(gateways, variant: str, path: str) -> None:
    headers = {"X-Forwarded-Proto": "https"} if variant == "https" else {}
    reply = request(gateways[variant].port, "GET", path, headers=headers)
    assert reply.status == 200
    names = reply.header_names()
    for name in LEAKY:
        assert name.lower() not in names, name
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


def test_plain_http_variant_never_sends_hsts(gateways) -> None:
    for headers in ({}, {"X-Forwarded-Proto": "https"}):  # loopback is not a trusted proxy
        reply = request(gateways["plain"].port, "GET", "/api/campaigns", headers=headers)
        assert HSTS.lower() not in reply.header_names()


def test_https_variant_sends_hsts_only_for_https(gateways) -> None:
    https = request(gateways["https"].port, "GET", "/api/campaigns",
                    headers={"X-Forwarded-Proto": "https"})
    assert https.headers[HSTS] == HSTS_VALUE
    plain = request(gateways["https"].port, "GET", "/api/campaigns")
    assert HSTS.lower() not in plain.header_names()


def test_scanner_is_the_installed_package() -> None:
    import shcheck  # declared in the `test` extra of pyproject.toml
    assert Path(shcheck.__file__).parent.name == "shcheck"
