"""deploy/ and the compose stack, checked without Docker or a running Prometheus: promtool
validates the Prometheus config and rules and runs the alerts' unit tests; the Grafana dashboard
parses and uses only DESIGN.md's metric names; docker-compose.yml, the Grafana provisioning and
the Dockerfile agree with each other and with files in the repository (the compose file's
own shape and its run: test_deploy_compose.py; the image: test_deploy_image.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import compose

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
# the alerts' promtool tests: minute by minute, and those needing hours of history (every 5m)
ALERTS_TESTS = (DEPLOY / "alerts_test.yml", DEPLOY / "alerts_long_test.yml")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

# DESIGN.md, "Metrics", and the CSP report collector's counter.
HISTOGRAMS = {
    "gateway_http_request_duration_seconds",
    "gateway_upstream_request_duration_seconds",
    "gateway_redis_duration_seconds",
}
DESIGN_METRICS = HISTOGRAMS | {
    "gateway_http_requests_total",
    "gateway_http_requests_in_flight",
    "gateway_upstream_errors_total",
    "gateway_ratelimit_decisions_total",
    "gateway_redis_errors_total",
    "gateway_config_reloads_total",
    "gateway_build_info",
    "gateway_csp_reports_total",
}
# Alert-only metrics of the gateway's own (not on the dashboard).
GATEWAY_ALERT_METRICS = {
    "gateway_tls_certificate_expiry_timestamp_seconds",  # TLS termination (server.tls)
}
# The demo application's metrics (upstream/metrics.py) that alerts may read.
UPSTREAM_METRICS = {
    "upstream_backup_last_verified_timestamp_seconds",
}
EXPECTED_ALERTS = {
    "GatewayDown",
    "GatewayHigh5xxRatio",
    "GatewayErrorBudgetBurn1h",
    "GatewayErrorBudgetBurn6h",
    "GatewayErrorBudgetBurn1d",
    "GatewayErrorBudgetBurn3d",
    "GatewayHighLatencyP95",
    "GatewayRedisErrors",
    "GatewayRateLimitSurge",
    "GatewayConfigReloadFailed",
    "GatewayCertificateExpiresSoon",
    "UpstreamNoVerifiedBackup",
}
# Words that look like identifiers in PromQL but are not metric names (functions are recognized
# by the "(" that follows them; these may appear without one).
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "start", "end", "atan2",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}


def metric_names(expr: str) -> set[str]:
    """Metric names (and recording-rule names) a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "[]", expr)  # ranges and subqueries
    names = set()
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr):
        name = match.group(1)
        if name.lower() in PROMQL_WORDS:
            continue
        base = re.sub(r"_(?:bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def recorded_names() -> set[str]:
    return {rule["record"] for group in load_yaml(ALERTS)["groups"]
            for rule in group["rules"] if "record" in rule}


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"]
            for rule in group["rules"] if "alert" in rule]


def dashboard_panels(panels: list[dict]) -> list[dict]:
    """Every panel, including those inside (collapsed) rows."""
    found = []
    for panel in panels:
        found.append(panel)
        found.extend(dashboard_panels(panel.get("panels", [])))
    return found


def dashboard_targets() -> list[tuple[str, str]]:
    """(name, expr) of every query in the dashboard, Grafana's $__ variables made 5m; the name
    (dashboard:panel_<id>_<refId>) doubles as a recording-rule name."""
    dashboard = json.loads(DASHBOARD.read_text())
    targets = []
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = re.sub(r"\$__\w+|\$\{__\w+\}", "5m", target["expr"])
            targets.append((f"dashboard:panel_{panel['id']}_{target['refId']}", expr))
    return targets


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `scripts/setup.sh --test` installs it "
                    "(Debian package prometheus)")
    return path


def run_promtool(promtool: str, *args: str) -> str:
    result = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


# --- Prometheus and alerts ----------------------------------------------------------------


@pytest.mark.integration
def test_prometheus_config_is_valid(promtool):
    run_promtool(promtool, "check", "config", "deploy/prometheus.yml")


@pytest.mark.integration
def test_alert_rules_are_valid(promtool):
    run_promtool(promtool, "check", "rules", "deploy/alerts.yml")


@pytest.mark.integration
@pytest.mark.parametrize("tests", ALERTS_TESTS, ids=lambda path: path.name)
def test_alert_rules_pass_their_promtool_unit_tests(promtool, tests):
    output = run_promtool(promtool, "test", "rules", str(tests.relative_to(ROOT)))
    assert "SUCCESS" in output and "FAILED" not in output


def test_alerts_are_the_documented_set():
    assert {rule["alert"] for rule in alert_rules()} == EXPECTED_ALERTS


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not():
    fires, quiet = set(), set()
    for case in (case for path in ALERTS_TESTS for case in load_yaml(path)["tests"]):
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - fires == set(), "never seen firing"
    assert alerts - quiet == set(), "never checked to stay quiet"


def test_every_alert_has_a_severity_and_a_summary():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_burn_rate_alerts_use_the_workbook_windows_and_factors():
    expected = {"GatewayErrorBudgetBurn1h": ("1h", "5m", "14.4", "page"),
                "GatewayErrorBudgetBurn6h": ("6h", "30m", "6", "page"),
                "GatewayErrorBudgetBurn1d": ("1d", "2h", "3", "ticket"),
                "GatewayErrorBudgetBurn3d": ("3d", "6h", "1", "ticket")}
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for name, (long, short, factor, severity) in expected.items():
        expr = " ".join(rules[name]["expr"].split())
        assert expr == (f"job:gateway_http_request_errors:ratio_rate{long} > ({factor} * 0.001) "
                        f"and job:gateway_http_request_errors:ratio_rate{short} "
                        f"> ({factor} * 0.001)"), name
        assert rules[name]["labels"]["severity"] == severity
    assert {f"job:gateway_http_request_errors:ratio_rate{w}"
            for w in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")} <= recorded_names()


def test_rules_read_only_design_metrics():
    allowed = DESIGN_METRICS | GATEWAY_ALERT_METRICS | UPSTREAM_METRICS | recorded_names() \
        | {"up"}
    for group in load_yaml(ALERTS)["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule["record"]
            names = metric_names(rule["expr"])
            assert names, name
            assert names <= allowed, f"{name}: {names - allowed}"


def test_metric_names_finds_metrics_and_skips_labels_functions_and_keywords():
    expr = ('sum by (route, code) (rate(gateway_http_requests_total{code=~"5.."}[5m] offset 1h))'
            ' / on (job) group_left (route) job:x:rate5m > bool 0.05 or vector(1)'
            ' and histogram_quantile(0.9, sum(rate(gateway_redis_duration_seconds_bucket[5m])))'
            ' unless label_replace(up, "a", "$1", "b", "(.*)") and sum(gateway_build_info)by(le)')
    assert metric_names(expr) == {"gateway_http_requests_total", "job:x:rate5m",
                                  "gateway_redis_duration_seconds", "up", "gateway_build_info"}


# --- Grafana dashboard --------------------------------------------------------------------


def test_dashboard_is_json_with_unique_panel_ids_and_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "gateway"
    panels = dashboard_panels(dashboard["panels"])
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    uids = {source["uid"] for source in
            load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]


@pytest.mark.integration
def test_dashboard_expressions_parse(promtool, tmp_path):
    targets = dashboard_targets()
    rules = [{"record": name, "expr": expr} for name, expr in targets]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    output = run_promtool(promtool, "check", "rules", str(path))
    assert f"{len(targets)} rules found" in output


def test_dashboard_reads_only_design_metrics_and_recorded_rules():
    allowed = DESIGN_METRICS | recorded_names()
    for name, expr in dashboard_targets():
        names = metric_names(expr)
        assert names, name
        assert names <= allowed, f"{name}: {names - allowed}"


def test_dashboard_shows_every_design_metric():
    shown = set().union(*(metric_names(expr) for _, expr in dashboard_targets()))
    assert DESIGN_METRICS - shown == set()


def test_dashboard_has_the_operator_panels():
    titles = {panel["title"] for panel in
              dashboard_panels(json.loads(DASHBOARD.read_text())["panels"])}
    for title in ("Requests by route and code class", "Responses by source: gateway vs upstream",
                  "Latency p50 / p95 / p99", "In-flight requests", "Rate-limit decisions",
                  "Redis errors by operation", "Redis call latency", "Upstream errors by kind",
                  "Config reloads", "Error budget burn rate", "Error budget left (30d)"):
        assert title in titles


# --- docker-compose and Grafana provisioning (the rest: test_deploy_compose.py) -------------


def compose_services() -> dict:
    return compose.load(compose.filled_env())["services"]


def in_container(service: dict, path: str) -> Path:
    """The repository path that a service sees at `path` through its bind mounts."""
    for mount in compose.mounts(service):
        if mount.is_bind and (path == mount.target
                              or path.startswith(mount.target.rstrip("/") + "/")):
            return ROOT / mount.source / os.path.relpath(path, mount.target)
    raise AssertionError(f"{path} is not mounted")


def test_compose_bind_mounts_exist():
    for service in compose_services().values():
        for mount in compose.mounts(service):
            if mount.is_bind:
                assert (ROOT / mount.source).exists(), mount


@pytest.mark.integration
def test_compose_runs_the_gateway_on_the_production_policy_with_its_required_env():
    gateway = compose_services()["gateway"]
    env = compose.environment(gateway)
    assert gateway["command"] == ["gateway", "run"]
    assert env["GATEWAY_CONFIG"] == "policies/production.yaml"
    assert env["UPSTREAM_URL"] == "http://upstream:8000"
    assert env["REDIS_URL"].startswith("redis://redis:")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, **env})
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_upstream_serves_the_demo_api_from_the_gateway_image():
    services = compose_services()
    assert services["upstream"]["command"] == [
        "python", "-m", "upstream", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert services["upstream"]["image"] == services["gateway"]["image"]


def test_prometheus_scrapes_the_gateway_admin_port_and_the_upstream_of_the_compose_stack():
    services = compose_services()
    config = load_yaml(DEPLOY / "prometheus.yml")
    targets = {job["job_name"]: [t for static in job["static_configs"] for t in static["targets"]]
               for job in config["scrape_configs"]}
    env = compose.environment(services["gateway"])
    admin_port = env["GATEWAY_ADMIN_LISTEN"].rsplit(":", 1)[1]
    assert targets["gateway"] == [f"gateway:{admin_port}"]
    upstream_command = services["upstream"]["command"]
    upstream_port = upstream_command[upstream_command.index("--port") + 1]
    assert targets["upstream"] == [f"upstream:{upstream_port}"]
    prometheus = services["prometheus"]
    assert in_container(prometheus, "/etc/prometheus/prometheus.yml") == DEPLOY / "prometheus.yml"
    for rule_file in config["rule_files"]:
        assert in_container(prometheus, f"/etc/prometheus/{rule_file}") == DEPLOY / rule_file


def test_grafana_provisioning_parses_and_points_at_the_stack():
    services = compose_services()
    grafana = services["grafana"]
    assert in_container(grafana, "/etc/grafana/provisioning") == PROVISIONING
    datasources = load_yaml(PROVISIONING / "datasources" / "prometheus.yml")["datasources"]
    assert [source["url"] for source in datasources] == ["http://prometheus:9090"]
    listen = next(a for a in services["prometheus"]["command"]
                  if a.startswith("--web.listen-address="))
    assert listen.endswith(":9090")
    providers = load_yaml(PROVISIONING / "dashboards" / "gateway.yml")["providers"]
    folders = [in_container(grafana, provider["options"]["path"]) for provider in providers]
    assert [folder / "gateway.json" for folder in folders] == [DASHBOARD]
