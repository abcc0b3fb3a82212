"""Every environment variable the code reads is documented in .env.example and set in
docker-compose.yml (and the Kubernetes manifests give the gateway what its policy needs).

The names are collected from the code, not listed by hand: string constants of the form
`NAME_LIKE_THIS` handed to a call in a module of gateway/ or upstream/ that reads the
environment (`os.environ.get("X")`, `os.getenv("X")`, `env.get("X")`, helpers such as
`_int(env, "X", ...)`), subscripts of `os.environ`, the `${VAR}`s of the shipped policies, and
those of deploy/backup-loop.sh. A few are deliberately not settings: EXCLUDED says why."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.support import compose
from tests.support.processes import ROOT

NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
# Read by the code, but not a setting of a deployment.
EXCLUDED = {
    # Set by the gateway's own supervisor for its workers (gateway/supervisor.py), never by a user.
    "PROMETHEUS_MULTIPROC_DIR",
}
# The production plan's settings: each must be wired even where no code reads it yet.
PLAN = {"ENVIRONMENT", "RELEASE_VERSION", "FRONTEND_URL", "PRODUCTION_URL", "DATABASE_URL",
        "REDIS_URL", "SENTRY_DSN", "SENTRY_TRACES_SAMPLE_RATE", "SENTRY_PROFILES_SAMPLE_RATE",
        "ENABLE_METRICS", "BACKUP_DIR", "RETENTION_DAYS", "AWS_S3_BUCKET", "SECRET_KEY",
        "JWT_EXPIRATION_MINUTES"}


def _reads_environment(source: str) -> bool:
    return "environ" in source or "getenv" in source or re.search(r"\benv\b", source) is not None


def names_read_by(path: Path) -> set[str]:
    source = path.read_text()
    if not _reads_environment(source):
        return set()
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for arg in node.args:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                        and NAME.match(arg.value):
                    found.add(arg.value)
        elif isinstance(node, ast.Subscript) and "environ" in ast.unparse(node.value):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                found.add(key.value)
    return found


def without_comments(path: Path) -> str:
    return re.sub(r"(?m)(^|\s)#.*$", "", path.read_text())


def code_variables() -> set[str]:
    names = set()
    for package in ("gateway", "upstream"):
        for path in (ROOT / package).rglob("*.py"):
            names |= names_read_by(path)
    for policy in (ROOT / "policies").glob("*.yaml"):
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", without_comments(policy)))
    script = (ROOT / "deploy" / "backup-loop.sh").read_text()
    names |= set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script))
    return names - EXCLUDED


def env_example_names() -> set[str]:
    text = (ROOT / ".env.example").read_text()
    assigned = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", text, re.M))
    documented = set(re.findall(r"^#\s+([A-Z][A-Z0-9_]*)\s{2,}\S", text, re.M))
    return assigned | documented


def compose_names() -> set[str]:
    config = compose.load(compose.filled_env())
    return {key for service in config["services"].values()
            for key in compose.environment(service)}


def test_the_collector_finds_the_settings_of_both_programs():
    found = code_variables()
    # a sample of each way of reading: os.environ.get, env.get, _int(env, ...), a helper
    # taking the name (_rate), ${VAR} in a policy, the backup script
    assert {"GATEWAY_CONFIG", "DATABASE_URL", "JWT_EXPIRATION_MINUTES",
            "SENTRY_TRACES_SAMPLE_RATE", "TRUSTED_PROXIES", "BACKUP_INTERVAL_SECONDS"} <= found
    assert not found & EXCLUDED


def test_every_variable_the_code_reads_is_in_env_example():
    missing = code_variables() - env_example_names()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_every_variable_the_code_reads_is_set_in_the_compose_file():
    missing = code_variables() - compose_names()
    assert not missing, f"set in docker-compose.yml: {sorted(missing)}"


def test_every_setting_of_the_plan_is_wired_and_documented():
    assert PLAN - env_example_names() == set()
    assert PLAN - compose_names() == set()


def test_env_example_sets_no_secret():
    text = (ROOT / ".env.example").read_text()
    values = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    assert values and all(value == "" for value in values.values()), \
        {k: v for k, v in values.items() if v}


def test_every_compose_variable_is_documented_in_env_example():
    raw = compose.COMPOSE_FILE.read_text()
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", raw))
    assert interpolated - env_example_names() == set()


def test_kubernetes_gives_the_gateway_every_variable_its_policy_requires():
    policies = " ".join(without_comments(p) for p in (ROOT / "policies").glob("*.yaml"))
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", policies))  # no default
    given = set()
    for path in (ROOT / "deploy" / "k8s").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "gateway-env":
                given |= set(doc["data"])
            if doc and doc.get("kind") == "Deployment" and doc["metadata"]["name"] == "gateway":
                for container in doc["spec"]["template"]["spec"]["containers"]:
                    given |= {e["name"] for e in container.get("env", [])}
    assert required <= given, required - given


# In the Secret upstream-secrets (docs/deploy.md), or not needed on Kubernetes.
K8S_NOT_IN_CONFIGMAP = {
    "SECRET_KEY", "DATABASE_URL",   # the Secret
    "AWS_ENDPOINT_URL",             # optional, in the Secret with the S3 credentials
    "UPSTREAM_DATA_DIR",            # the embedded PostgreSQL: never with DATABASE_URL
}


def test_kubernetes_gives_the_api_every_variable_it_reads():
    read = set()
    for path in (ROOT / "upstream").rglob("*.py"):
        read |= names_read_by(path)
    given = set()
    for doc in yaml.safe_load_all((ROOT / "deploy" / "k8s" / "upstream.yaml").read_text()):
        if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "upstream-env":
            given |= set(doc["data"])
    assert read - EXCLUDED - given - K8S_NOT_IN_CONFIGMAP == set()
    assert "DATABASE_URL" in read and "SECRET_KEY" in read
