"""deploy/k8s/: every manifest valid against the Kubernetes schemas (kubernetes-validate ships
them, so this runs offline; strict: an unknown field fails), and the fields docs/deploy.md
promises: 3 gateway replicas probed on /ready and /health with a preStop pause, limits, a
non-root read-only security context, a Service with the public port only, a PDB, an HPA, the
policy as a directory-mounted ConfigMap that passes `gateway check`, Redis through Sentinel, the
API with its migration Job and backup CronJob, and scrape annotations for Prometheus."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.processes import ROOT

K8S = ROOT / "deploy" / "k8s"
# The oldest Kubernetes release still commonly run, and the newest kubernetes-validate knows.
VERSIONS = ("1.30.0", "1.37.0")


def manifests() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> dict[tuple[str, str], dict]:
    found = {}
    for path in manifests():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def pod(kind: str, name: str) -> dict:
    spec = resources()[(kind, name)]["spec"]
    if kind == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


def container(kind: str, name: str, index: int = 0) -> dict:
    return pod(kind, name)["containers"][index]


@pytest.mark.integration
@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(version):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet",
         "-k", version, *map(str, manifests())],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stdout + result.stderr


def test_the_kustomization_lists_every_manifest_and_sets_the_image():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in manifests()]
    images = {image["name"] for image in kustomization["images"]}
    for (kind, _), doc in resources().items():
        if kind in {"Deployment", "Job", "CronJob"}:
            spec = doc["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else doc["spec"]
            pod_spec = spec["template"]["spec"]
            for c in pod_spec.get("initContainers", []) + pod_spec["containers"]:
                assert c["image"] in images, (kind, c["name"])


def test_the_gateway_runs_three_replicas_probed_on_ready_and_health():
    deployment = resources()[("Deployment", "gateway")]
    assert deployment["spec"]["replicas"] == 3
    gateway = container("Deployment", "gateway")
    ports = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "admin"}
    env = resources()[("ConfigMap", "gateway-env")]["data"]
    assert env["GATEWAY_ADMIN_LISTEN"] == f"0.0.0.0:{ports['admin']}"
    assert env["GATEWAY_LISTEN"] == f"0.0.0.0:{ports['http']}"


def test_the_gateway_pauses_before_draining_within_its_grace_period():
    gateway = container("Deployment", "gateway")
    command = gateway["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 5
    policy = yaml.safe_load((ROOT / "policies" / "gateway.yaml").read_text())
    shutdown = int(policy["server"]["timeouts"]["shutdown"].rstrip("s"))
    assert pod("Deployment", "gateway")["terminationGracePeriodSeconds"] > int(command[1]) \
        + shutdown


@pytest.mark.parametrize("kind,name", [("Deployment", "gateway"), ("Deployment", "upstream"),
                                       ("Job", "upstream-migrate"),
                                       ("CronJob", "upstream-backup")])
def test_every_pod_is_non_root_read_only_with_requests_and_limits(kind, name):
    spec = pod(kind, name)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["automountServiceAccountToken"] is False
    for c in spec.get("initContainers", []) + spec["containers"]:
        context = c["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, c["name"]
        assert context["allowPrivilegeEscalation"] is False, c["name"]
        assert context["capabilities"]["drop"] == ["ALL"], c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, c["name"]  # the only writable place besides volumes


def test_the_service_exposes_the_public_port_only():
    service = resources()[("Service", "gateway")]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    assert service["spec"]["type"] == "ClusterIP"
    labels = resources()[("Deployment", "gateway")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_a_disruption_budget_and_an_autoscaler_keep_at_least_the_replicas():
    pdb = resources()[("PodDisruptionBudget", "gateway")]
    assert pdb["spec"]["maxUnavailable"] == 1
    hpa = resources()[("HorizontalPodAutoscaler", "gateway")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_the_policy_is_a_configmap_mounted_as_a_directory_for_hot_reload():
    spec = pod("Deployment", "gateway")
    volume = next(v for v in spec["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == "gateway-policy"
    mount = next(m for m in container("Deployment", "gateway")["volumeMounts"]
                 if m["name"] == volume["name"])
    assert "subPath" not in mount  # a subPath mount never sees the `..data` swap
    env = resources()[("ConfigMap", "gateway-env")]["data"]
    policy_file = env["GATEWAY_CONFIG"]
    assert Path(policy_file).parent == Path(mount["mountPath"])
    assert Path(policy_file).name in resources()[("ConfigMap", "gateway-policy")]["data"]
    assert container("Deployment", "gateway")["args"] == ["gateway", "run"]  # GATEWAY_CONFIG


@pytest.mark.integration
def test_the_configmap_policy_passes_gateway_check_with_the_deployment_env(tmp_path):
    policy = resources()[("ConfigMap", "gateway-policy")]["data"]["policy.yaml"]
    # /app is the image's copy of the repository (Dockerfile: WORKDIR /app, COPY policies).
    (tmp_path / "policy.yaml").write_text(policy.replace("/app/policies/",
                                                         f"{ROOT}/policies/"))
    env = {**os.environ, **resources()[("ConfigMap", "gateway-env")]["data"]}
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "--config",
                             str(tmp_path / "policy.yaml")],
                            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_redis_is_addressed_through_sentinel():
    url = resources()[("ConfigMap", "gateway-env")]["data"]["REDIS_URL"]
    assert url.startswith(("redis+sentinel://", "redis+cluster://"))


def test_the_api_waits_for_its_migration_job_and_is_backed_up_nightly():
    job = container("Job", "upstream-migrate")
    assert job["args"] == ["python", "-m", "upstream", "migrate", "upgrade"]
    assert pod("Job", "upstream-migrate")["restartPolicy"] == "Never"
    init = pod("Deployment", "upstream")["initContainers"][0]
    assert init["args"] == ["python", "-m", "upstream", "migrate", "check"]
    api = container("Deployment", "upstream")
    assert api["args"][:4] == ["python", "-m", "upstream", "serve"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    cron = resources()[("CronJob", "upstream-backup")]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert "backup create --verify" in " ".join(container("CronJob", "upstream-backup")["args"])
    env = resources()[("ConfigMap", "upstream-env")]["data"]
    mounts = {m["mountPath"]: m for m in container("CronJob", "upstream-backup")["volumeMounts"]}
    assert env["BACKUP_DIR"] in mounts


def test_prometheus_finds_the_gateway_and_the_api_through_pod_annotations():
    for name, port in (("gateway", "9090"), ("upstream", "8000")):
        template = resources()[("Deployment", name)]["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == port
        ports = {str(p["containerPort"]) for p in template["spec"]["containers"][0]["ports"]}
        assert port in ports
