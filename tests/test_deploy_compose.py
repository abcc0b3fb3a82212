"""docker-compose.yml: valid against the Compose specification's schema (check-jsonschema's
vendored copy, offline), shaped as docs/deploy.md says (health checks, depends_on conditions,
only the public ports published, secrets without defaults), and run without Docker: the
services' own commands, environment and health checks started as local processes
(tests/support/compose.py) in their depends_on order, with a request end to end through the
gateway to the API, its counters read back from Prometheus, and one scheduled backup written
to its volume and to the S3 bucket .env names (moto's server standing in for S3)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support import compose
from tests.support.client import request
from tests.support.processes import ROOT, eventually, wait_until

PUBLISHED = {"gateway": ["8080"], "prometheus": ["9090"], "grafana": ["3000"]}
SECRETS = ("SECRET_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
ONE_SHOT = {"migrate"}
# Images this machine cannot run (no Grafana package): their shape is checked, not run.
NOT_RUN = {"grafana"}


@pytest.fixture(scope="module")
def config() -> dict:
    return compose.load(compose.filled_env())


def services(config: dict) -> dict[str, dict]:
    return config["services"]


# --- the file ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_compose_file_validates_against_the_compose_specification_schema():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
         "vendor.compose-spec", str(compose.COMPOSE_FILE)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_stack_has_every_service_of_the_deployment(config):
    assert set(services(config)) == {"gateway", "upstream", "migrate", "backup", "postgres",
                                     "redis", "prometheus", "grafana"}
    assert services(config)["postgres"]["image"].startswith("postgres:16")
    assert services(config)["redis"]["image"].startswith("redis:7")


def test_every_service_has_a_health_check(config):
    for name, service in services(config).items():
        assert compose.healthcheck_command(service), f"{name} has no health check"
        assert not service["healthcheck"].get("disable"), name


def test_depends_on_always_names_a_condition(config):
    for name, service in services(config).items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on without conditions"
        for dep, spec in deps.items():
            assert spec.get("condition") in {"service_healthy",
                                              "service_completed_successfully"}, (name, dep)
    assert compose.start_order(services(config))  # no cycle, no unknown service


def test_the_api_and_the_backups_wait_for_the_migration_to_succeed(config):
    for name in ("upstream", "backup"):
        deps = compose.depends_on(services(config)[name])
        assert deps["migrate"] == "service_completed_successfully", name
        assert deps["postgres"] == "service_healthy", name
    assert compose.depends_on(services(config)["gateway"]) == {
        "upstream": "service_healthy", "redis": "service_healthy"}


def test_only_the_gateway_public_port_prometheus_and_grafana_are_published(config):
    published = {}
    for name, service in services(config).items():
        for port in service.get("ports", []):
            published.setdefault(name, []).append(str(port).rsplit(":", 1)[-1])
        assert "expose" not in service or name not in PUBLISHED, name
    assert published == PUBLISHED
    admin = compose.environment(services(config)["gateway"])["GATEWAY_ADMIN_LISTEN"]
    assert admin.rsplit(":", 1)[1] not in published["gateway"]


def test_every_service_has_a_restart_policy_and_resource_limits(config):
    for name, service in services(config).items():
        expected = "no" if name in ONE_SHOT else "unless-stopped"
        assert service.get("restart") == expected, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits.get("memory") and limits.get("cpus"), name


def test_secrets_have_no_default_and_compose_refuses_to_start_without_them():
    for secret in SECRETS:
        env = {k: v for k, v in compose.filled_env().items() if k != secret}
        with pytest.raises(compose.InterpolationError, match=secret):
            compose.load(env)
        with pytest.raises(compose.InterpolationError, match=secret):
            compose.load({**env, secret: ""})  # an empty line in .env counts as unset


def test_redis_keeps_counters_in_memory_only(config):
    redis = services(config)["redis"]
    command = redis["command"]
    assert command[command.index("--save") + 1] == ""
    assert command[command.index("--appendonly") + 1] == "no"
    assert "volumes" not in redis


def test_postgres_keeps_its_data_on_a_volume_and_backups_on_another(config):
    mounts = {m.target: m for m in compose.mounts(services(config)["postgres"])}
    assert not mounts["/var/lib/postgresql/data"].is_bind
    backup = services(config)["backup"]
    backup_dir = compose.environment(backup)["BACKUP_DIR"]
    targets = {m.target: m for m in compose.mounts(backup)}
    assert backup_dir in targets and not targets[backup_dir].is_bind
    assert not targets[backup_dir].read_only
    # The API reports the newest verified backup (/metrics): it sees the same volume, read-only.
    api = {m.target: m for m in compose.mounts(services(config)["upstream"])}
    assert api[backup_dir].source == targets[backup_dir].source and api[backup_dir].read_only
    env = compose.environment(backup)
    assert {"AWS_S3_BUCKET", "RETENTION_DAYS", "BACKUP_INTERVAL_SECONDS"} <= set(env)


def test_no_aws_setting_that_boto3_misreads_when_empty_defaults_to_empty(config):
    # boto3 takes AWS_DEFAULT_REGION="" as a region and builds https://s3..amazonaws.com;
    # empty credentials or endpoint are ignored (the instance role, AWS's endpoint).
    assert compose.environment(services(config)["backup"])["AWS_DEFAULT_REGION"]


def test_the_application_services_run_the_one_image_with_different_commands(config):
    app = {name: services(config)[name] for name in ("gateway", "upstream", "migrate", "backup")}
    assert {service["image"] for service in app.values()} == {"gateway:local"}
    assert all(service["build"] == "." for service in app.values())
    commands = [tuple(service["command"]) for service in app.values()]
    assert len(set(commands)) == len(commands)
    assert app["migrate"]["command"] == ["python", "-m", "upstream", "migrate", "upgrade"]


def test_prometheus_loads_the_repository_rules_and_grafana_the_dashboard(config):
    prometheus = services(config)["prometheus"]
    binds = {m.target: ROOT / m.source for m in compose.mounts(prometheus) if m.is_bind}
    config_file = next(a.split("=", 1)[1] for a in prometheus["command"]
                       if a.startswith("--config.file="))
    assert binds[config_file] == ROOT / "deploy" / "prometheus.yml"
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())["rule_files"]
    for rule_file in rules:
        assert binds[str(Path(config_file).parent / rule_file)] == ROOT / "deploy" / rule_file
    grafana = {m.target: ROOT / m.source for m in compose.mounts(services(config)["grafana"])
               if m.is_bind}
    assert grafana["/etc/grafana/provisioning"] == ROOT / "deploy" / "grafana" / "provisioning"
    assert (grafana["/etc/grafana/dashboards"] / "gateway.json").is_file()


# --- the topology, run as local processes ---------------------------------------------------


class Topology:
    def __init__(self, stack: compose.LocalStack) -> None:
        self.stack = stack
        self.started: list[str] = []
        self.healthy: set[str] = set()
        self.completed: set[str] = set()
        self.s3: dict[str, str] = {}

    def satisfied(self, dep: str, condition: str) -> bool:
        if condition == "service_completed_successfully":
            return dep in self.completed
        if condition == "service_healthy":
            return dep in self.healthy
        return dep in self.started

    def start(self, name: str) -> None:
        service = self.stack.config["services"][name]
        local = self.stack.prepare(name)
        if name == "prometheus":
            self.scrape_every_second(local)
        if "build" in service:
            self.stack.spawn(local)
        else:
            compose.start_image_service(self.stack, local, service["image"])
        self.started.append(name)

    def scrape_every_second(self, local: compose.LocalService) -> None:
        """The one change to deploy/prometheus.yml besides the addresses: 1 s instead of 15 s,
        so that a counter shows within a second or two."""
        path = Path(next(a.split("=", 1)[1] for a in local.argv
                         if a.startswith("--config.file=")))
        config = yaml.safe_load(path.read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        path.write_text(yaml.safe_dump(config))

    def step(self) -> bool:
        """Start what can start, note what became healthy or completed; True when done."""
        services = self.stack.config["services"]
        for name in compose.start_order(services):
            if name in NOT_RUN or name in self.started:
                continue
            if all(self.satisfied(dep, cond)
                   for dep, cond in compose.depends_on(services[name]).items()):
                self.start(name)
        wanted_healthy = {dep for service in services.values()
                          for dep, cond in compose.depends_on(service).items()
                          if cond == "service_healthy"}
        for name in self.started:
            proc = self.stack.services[name].proc
            if name in ONE_SHOT:
                if proc is not None and proc.poll() is not None:
                    if proc.returncode != 0:
                        raise RuntimeError(f"{name} exited {proc.returncode}:\n"
                                           + self.stack.services[name].log_text())
                    self.completed.add(name)
                continue
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n"
                                   + self.stack.services[name].log_text())
            if name in wanted_healthy and name not in self.healthy and self.stack.healthy(name):
                self.healthy.add(name)
        return set(self.started) == set(services) - NOT_RUN


S3_BUCKET = "compose-backups"


@pytest.fixture(scope="module")
def s3_settings() -> Iterator[dict[str, str]]:
    """An S3 endpoint outside the stack (moto's server), as .env would name one. On 127.0.0.2:
    outside the stack, since inside a container 127.0.0.1 is the container itself."""
    import logging

    from moto.server import ThreadedMotoServer

    from tests.support.processes import free_port
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.2", port=port, verbose=False)
    server.start()
    settings = {"AWS_S3_BUCKET": S3_BUCKET, "AWS_ENDPOINT_URL": f"http://127.0.0.2:{port}",
                "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    s3_client(settings).create_bucket(Bucket=S3_BUCKET)
    try:
        yield settings
    finally:
        server.stop()


def s3_client(settings: dict[str, str]):
    import boto3
    return boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=settings["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=settings["AWS_SECRET_ACCESS_KEY"])


@pytest.fixture(scope="module")
def topology(s3_settings, tmp_path_factory) -> Iterator[Topology]:
    # .env as an operator fills it: the three secrets, and a bucket for the backups.
    config = compose.load({**compose.filled_env(), **s3_settings})
    stack = compose.LocalStack(config, tmp_path_factory.mktemp("compose"))
    top = Topology(stack)
    top.s3 = s3_settings
    try:
        wait_until(top.step, timeout=120, interval=0.1)
        yield top
    finally:
        stack.stop_all()


def url(top: Topology, service: str, port: int, path: str = "") -> str:
    return f"http://127.0.0.1:{top.stack.port(service, port)}{path}"


def prometheus_query(top: Topology, query: str) -> list[dict]:
    address = url(top, "prometheus", 9090, "/api/v1/query?" + urllib.parse.urlencode(
        {"query": query}))
    with urllib.request.urlopen(address, timeout=5) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]["result"]


def check_services_start_in_depends_on_order_and_pass_their_own_health_checks(topology):
    order = topology.started
    services = topology.stack.config["services"]
    for name in order:
        for dep in compose.depends_on(services[name]):
            assert order.index(dep) < order.index(name), (dep, name)
    assert order.index("upstream") > order.index("migrate")
    assert topology.completed == ONE_SHOT
    for name in set(order) - ONE_SHOT:
        assert eventually(lambda name=name: topology.stack.healthy(name), timeout=30), \
            f"{name} unhealthy:\n{topology.stack.services[name].log_text()[-2000:]}"


def check_a_request_passes_through_the_gateway_to_the_api(topology):
    reply = request(topology.stack.port("gateway", 8080), "GET", "/api/campaigns")
    assert reply.status == 401  # the API's answer: a token is required
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    assert reply.headers["X-Content-Type-Options"] == "nosniff"  # the gateway's policy
    assert "api" in reply.headers["RateLimit-Policy"]
    health = request(topology.stack.port("gateway", 8080), "GET", "/health")
    assert health.status == 200 and health.json()["environment"] == "production"


def check_prometheus_scrapes_the_gateway_and_the_api_and_loads_the_alerts(topology):
    port = topology.stack.port("gateway", 8080)
    for _ in range(3):
        request(port, "GET", "/api/campaigns")

    def counted(query: str) -> bool:
        return sum(float(r["value"][1]) for r in prometheus_query(topology, query)) >= 3

    assert eventually(lambda: counted(
        'gateway_http_requests_total{route="api",source="upstream",code="401"}'), timeout=20)
    assert eventually(lambda: counted('upstream_http_requests_total'), timeout=20)
    up = {r["metric"]["job"]: r["value"][1] for r in prometheus_query(topology, "up")}
    assert up == {"gateway": "1", "upstream": "1"}
    with urllib.request.urlopen(url(topology, "prometheus", 9090, "/api/v1/rules"),
                                timeout=5) as response:
        groups = json.load(response)["data"]["groups"]
    alerts = {rule["name"] for group in groups for rule in group["rules"]
              if rule["type"] == "alerting"}
    assert {"GatewayDown", "UpstreamNoVerifiedBackup"} <= alerts


def check_the_backup_service_writes_a_verified_backup_to_its_volume(topology):
    volume = topology.stack.volume("backups")
    assert eventually(lambda: (volume / ".last-success").exists(), timeout=60), \
        topology.stack.services["backup"].log_text()[-3000:]
    manifests = [p for p in volume.glob("upstream-*.json") if not p.name.endswith(".verify.json")]
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["database"] == "upstream"
    assert (volume / manifests[0].name.replace(".json", ".verify.json")).exists()
    assert topology.stack.healthy("backup")
    # and to the bucket .env names (AWS_S3_PREFIX's default, backups/)
    listing = s3_client(topology.s3).list_objects_v2(Bucket=S3_BUCKET)
    keys = {item["Key"] for item in listing.get("Contents", [])}
    assert f"backups/{manifests[0].name}" in keys, keys


# One test, so that the stack starts once: the project runs pytest-xdist with `--dist
# loadgroup`, but under pytest 9 xdist's groups are not applied (it sets `item._nodeid`, which
# pytest 9 no longer reads), so separate tests would each start the stack on their worker.
# Each check is a function named after the behaviour it checks, and says what failed.
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.heavy(seconds=14)  # PostgreSQL, the API, the gateway, Redis, Prometheus, moto at once
def test_the_compose_topology_runs_as_local_processes(topology, subtests):
    for check in (check_services_start_in_depends_on_order_and_pass_their_own_health_checks,
                  check_a_request_passes_through_the_gateway_to_the_api,
                  check_prometheus_scrapes_the_gateway_and_the_api_and_loads_the_alerts,
                  check_the_backup_service_writes_a_verified_backup_to_its_volume):
        with subtests.test(msg=check.__name__.removeprefix("check_")):
            check(topology)
