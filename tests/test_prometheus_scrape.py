"""A real Prometheus server scrapes a running gateway, and PromQL sees the requests sent."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

from tests.support.client import request
from tests.support.processes import free_port, stop, wait_for_port, wait_until


def query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


def test_prometheus_scrapes_the_request_count(gateway, tmp_path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by `scripts/setup.sh --test` (Debian package)"
    for _ in range(7):
        assert request(gateway.port, "GET", "/api/x").status == 200
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: gateway\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{gateway.admin_port}']}}]\n")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc, timeout=30)
        promql = 'sum(gateway_http_requests_total{route="everything",code="200"})'

        def seven() -> bool:
            try:
                result = query(port, promql)
            except OSError:
                return False
            return bool(result) and float(result[0]["value"][1]) == 7

        wait_until(seven, timeout=30, interval=0.5)
        up = query(port, 'up{job="gateway"}')
        assert float(up[0]["value"][1]) == 1
    finally:
        stop(proc)
