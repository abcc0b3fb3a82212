"""The image, checked without building it (no Docker engine here): hadolint on the Dockerfile,
the Dockerfile's promises (multi-stage on python:3.12-slim, hash-locked dependencies, non-root,
STOPSIGNAL, HEALTHCHECK on the admin /health, one image for every command), the lock file
against pyproject.toml, .dockerignore, and the two helpers the image ships (deploy/)."""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import os
import re
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import ROOT, free_port

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
# deploy/healthcheck.py is a script the image ships, not part of a package.
_spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "deploy" / "healthcheck.py")
healthcheck = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(healthcheck)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def args_of(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions() if kw == keyword]


# --- hadolint ------------------------------------------------------------------------------


@pytest.mark.integration
def test_hadolint_passes_on_the_dockerfile():
    result = subprocess.run([str(Path(sys.executable).parent / "hadolint"), str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_is_explained_inline():
    # No configuration file may ignore rules out of sight of the Dockerfile.
    for name in (".hadolint.yaml", ".hadolint.yml", ".config/hadolint.yaml"):
        assert not (ROOT / name).exists(), name
    for line in DOCKERFILE.read_text().splitlines():
        match = re.search(r"#\s*hadolint\s+(?:global\s+)?ignore=(\S+)(.*)", line)
        if match:
            assert len(match.group(2).strip(" :-—")) >= 10, f"unexplained: {line.strip()}"


# --- what the Dockerfile promises ------------------------------------------------------------


def test_two_stages_on_python_3_12_slim_and_only_the_venv_crosses_over():
    stages = args_of("FROM")
    assert stages == ["python:3.12-slim AS build", "python:3.12-slim"]
    copies_from_build = [a for a in args_of("COPY") if a.startswith("--from=")]
    assert copies_from_build == ["--from=build /opt/venv /opt/venv"]


def test_dependencies_come_from_the_lock_with_hashes_required():
    runs = " ".join(args_of("RUN"))
    assert "--require-hashes" in runs and "-r /tmp/requirements.lock" in runs
    # The project itself adds no dependency of its own choosing.
    assert re.search(r"pip install --no-deps \.", runs)


def test_runs_as_a_non_root_user_with_a_stop_signal_and_a_health_check():
    user = args_of("USER")[-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert args_of("STOPSIGNAL") == ["SIGTERM"]
    (check,) = args_of("HEALTHCHECK")
    assert '"/app/deploy/healthcheck.py", "http://127.0.0.1:9090/health"' in check
    # 9090: the admin port of the shipped policies (GATEWAY_ADMIN_LISTEN's default).
    assert "${GATEWAY_ADMIN_LISTEN:-127.0.0.1:9090}" in (ROOT / "policies" /
                                                         "gateway.yaml").read_text()
    assert args_of("CMD") == ['["gateway", "run", "--config", "policies/production.yaml"]']


def test_every_copied_file_exists_and_is_not_docker_ignored():
    ignored = dockerignore_patterns()
    for args in args_of("COPY"):
        if args.startswith("--from="):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), args
            assert not is_ignored(source, ignored), args


def test_policies_are_baked_in_and_the_helpers_the_compose_file_runs_are_copied():
    copies = args_of("COPY")
    assert "policies ./policies" in copies
    assert "deploy/healthcheck.py deploy/backup-loop.sh ./deploy/" in copies
    assert "WORKDIR /app" in [f"WORKDIR {a}" for a in args_of("WORKDIR")][-1:]


# --- the lock file -------------------------------------------------------------------------


def locked() -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (version, hashes, what it is required by) from requirements.lock."""
    packages: dict[str, tuple[str, list[str], list[str]]] = {}
    current = None
    via_block = False
    for line in LOCK.read_text().splitlines():
        entry = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
        if entry:
            current = canonicalize_name(entry.group(1))
            packages[current] = (entry.group(2), [], [])
            via_block = False
            continue
        if current is None:
            continue
        hashed = re.search(r"--hash=(sha256:[0-9a-f]{64})", line)
        if hashed:
            packages[current][1].append(hashed.group(1))
        via = re.match(r"\s*#\s+via\s*(.*)$", line)
        if via:
            via_block = True
            if via.group(1):
                packages[current][2].append(via.group(1).strip())
        elif via_block and re.match(r"\s*#\s{3}\S", line):
            packages[current][2].append(line.strip("# ").strip())
    return packages


def project_dependencies() -> list[Requirement]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [Requirement(spec) for spec in pyproject["project"]["dependencies"]]


def lock_target() -> dict[str, str]:
    """The marker environment the lock was compiled for (from the command in its header)."""
    header = LOCK.read_text().split("\n", 3)[:3]
    command = next(line for line in header if "uv pip compile" in line)
    version = re.search(r"--python-version (\d+\.\d+)", command).group(1)
    assert "--python-platform linux" in command, command
    return {**default_environment(), "python_version": version, "python_full_version":
            f"{version}.0", "sys_platform": "linux", "platform_system": "Linux",
            "os_name": "posix"}


STALE = ("requirements.lock is stale: regenerate it with the command in its header "
         "(uv pip compile pyproject.toml ... -o requirements.lock)")


def test_the_lock_pins_every_dependency_of_pyproject_within_its_range():
    packages = locked()
    target = lock_target()
    for requirement in project_dependencies():
        if requirement.marker is not None and not requirement.marker.evaluate(target):
            continue
        name = canonicalize_name(requirement.name)
        assert name in packages, f"{STALE}: {requirement} is not locked"
        assert requirement.specifier.contains(packages[name][0], prereleases=True), \
            f"{STALE}: {name}=={packages[name][0]} is outside {requirement}"


def test_the_lock_has_nothing_pyproject_no_longer_asks_for():
    direct = {canonicalize_name(r.name) for r in project_dependencies()}
    from_pyproject = {name for name, (_, _, via) in locked().items()
                      if "gateway (pyproject.toml)" in via}
    assert from_pyproject == direct, STALE
    required = {req for _, _, via in locked().values() for req in via}
    for name, (_, _, via) in locked().items():
        assert via, f"{STALE}: nothing requires {name}"
    assert required  # the annotations were read


def test_every_locked_package_has_hashes_and_targets_the_image_python():
    for name, (_, hashes, _) in locked().items():
        assert hashes, f"{name} has no --hash"
    image_python = re.match(r"python:(\d+\.\d+)-slim", args_of("FROM")[0]).group(1)
    assert lock_target()["python_version"] == image_python


# --- .dockerignore -------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins, `!` re-includes; `**` any depth."""
    ignored = False
    parts = Path(path).parts
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, pattern) or (
                    pattern.startswith("**/") and fnmatch.fnmatch(parts[depth - 1],
                                                                   pattern[3:])):
                ignored = not negate
                break
    return ignored


@pytest.mark.parametrize("path", [
    "tests/test_deploy.py", ".venv/bin/python", ".git/HEAD", "gateway/__pycache__/cli.pyc",
    ".pytest_cache/v", ".ruff_cache/x", ".hypothesis/x", "gateway.egg-info/PKG-INFO", ".env",
    "backups/x.dump", ".data/pg/PG_VERSION", "loadtests/results/x", "docs/deploy.md",
    "deploy/k8s/kustomization.yaml",
])
def test_dockerignore_keeps_tests_venvs_caches_and_local_state_out(path):
    assert is_ignored(path, dockerignore_patterns())


def test_dockerignore_keeps_what_the_image_needs():
    patterns = dockerignore_patterns()
    for path in ("gateway/cli.py", "upstream/cli.py", "policies/production.yaml",
                 "deploy/healthcheck.py", "requirements.lock", "pyproject.toml", "README.md"):
        assert not is_ignored(path, patterns), path


# --- deploy/healthcheck.py and deploy/backup-loop.sh -----------------------------------------


def test_healthcheck_file_mode_is_healthy_only_while_the_file_is_fresh(tmp_path, capsys):
    marker = tmp_path / ".last-success"
    assert healthcheck.main(["--file", str(marker), "--max-age", "60"]) == 1
    assert "missing" in capsys.readouterr().err
    marker.touch()
    assert healthcheck.main(["--file", str(marker), "--max-age", "60"]) == 0
    os.utime(marker, (0, 0))
    assert healthcheck.main(["--file", str(marker), "--max-age", "60"]) == 1


@pytest.mark.parametrize("argv", [[], ["--file", "x"], ["--file", "x", "--max-age", "soon"],
                                  ["--file", "x", "--max-age", "-1"], ["ftp://host/health"],
                                  ["a", "b"]])
def test_healthcheck_bad_usage_is_one_line_and_exit_2(argv, capsys):
    assert healthcheck.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("healthcheck: ") and err.count("\n") == 1


@pytest.mark.integration
def test_healthcheck_url_mode_wants_a_2xx(tmp_path):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]
        ok = subprocess.run([*run, f"http://127.0.0.1:{port}/health"], capture_output=True,
                            text=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
        bad = subprocess.run([*run, f"http://127.0.0.1:{port}/ready"], capture_output=True,
                             text=True, timeout=30)
        assert bad.returncode == 1 and "HTTP 503" in bad.stderr
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run([*run, f"http://127.0.0.1:{port}/health"], capture_output=True,
                          text=True, timeout=30)
    assert down.returncode == 1 and down.stderr.startswith("unhealthy: ")


@pytest.mark.integration
@pytest.mark.parametrize("interval", ["0", "daily", "-5"])
def test_backup_loop_refuses_a_bad_interval_in_one_line(interval, tmp_path):
    result = subprocess.run(["sh", str(ROOT / "deploy" / "backup-loop.sh")],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "BACKUP_DIR": str(tmp_path),
                                 "BACKUP_INTERVAL_SECONDS": interval})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "BACKUP_INTERVAL_SECONDS" in result.stderr
