"""Start and stop the real processes the tests talk to: gateway and test upstream."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# Ports for the processes the tests start. A port the kernel picks (bind to 0, then release)
# can be picked again by a parallel test (pytest-xdist worker) before the process that was given
# it binds it, and a port meant to have nothing listening ("a dead upstream") can be taken by
# another worker's server. So every worker draws from its own block below the kernel's ephemeral
# range (32768+, where outgoing connections get their source ports), in turn, skipping ports
# that are in use: no two workers ever hand out the same port, and a port handed out is not
# handed out again by the same worker for the next PORTS_PER_WORKER draws.
PORT_BASE = 10000  # blocks 10000-19999; Redis Cluster bus ports (+10000) land in 20000-29999
PORTS_PER_WORKER = 1000
PORT_BLOCKS = 10


def _worker_index() -> int:
    """0 for a serial run (and the controller), N for xdist worker gwN."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 0


def _port_cycle() -> Iterator[int]:
    start = PORT_BASE + (_worker_index() % PORT_BLOCKS) * PORTS_PER_WORKER
    # Another run of the suite on the same machine starts elsewhere in the block.
    offset = os.getpid() % PORTS_PER_WORKER
    return itertools.cycle([start + (offset + i) % PORTS_PER_WORKER
                            for i in range(PORTS_PER_WORKER)])


_ports = _port_cycle()


def bindable(port: int) -> bool:
    """Nothing is bound to 127.0.0.1:`port` (listening, connected or in TIME_WAIT)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(also: tuple[int, ...] = ()) -> int:
    """A port of this worker's block that nothing uses (nor `port + n` for each n in `also`)."""
    for _ in range(PORTS_PER_WORKER):
        port = next(_ports)
        if bindable(port) and all(bindable(port + n) for n in also):
            return port
    raise RuntimeError("no free port left in this worker's block")


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {port} after {timeout}s")


def eventually(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Whether `predicate()` became true within `timeout` seconds: for `assert eventually(...),
    "what should have happened"`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    """A precondition the test waits for (TimeoutError if it never holds)."""
    if not eventually(predicate, timeout, interval):
        raise TimeoutError("condition not met in time")


@dataclass
class Upstream:
    port: int
    raw_port: int
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def raw_url(self) -> str:
        return f"http://127.0.0.1:{self.raw_port}"


def start_ready(module: str, *args: str) -> subprocess.Popen:
    """`python -m module args`, once it has printed its `{"ready": ...}` line."""
    proc = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    assert proc.stdout is not None
    if '"ready"' not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError(f"{module} did not start")
    return proc


def start_upstream(*tls: str) -> Upstream:
    """The test upstream; `tls` adds its TLS options (--tls-cert FILE --tls-key FILE ...)."""
    port, raw_port = free_port(), free_port()
    proc = start_ready("tests.support.upstream", "--port", str(port),
                       "--raw-port", str(raw_port), *tls)
    return Upstream(port, raw_port, proc)


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@dataclass
class Gateway:
    port: int
    admin_port: int
    proc: subprocess.Popen
    config: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


POLICY_TEMPLATE = """\
version: 1
environment: test
server:
  listen: 127.0.0.1:{port}
  admin_listen: 127.0.0.1:{admin_port}
{server_extra}
upstream:
  {upstream_key}: {upstream}
{upstream_extra}
routes:
{routes}
{top_extra}
"""

DEFAULT_ROUTES = """\
  - name: ws
    match: {path: /ws}
    websocket: true
  - name: everything
    match: {path_prefix: /}
"""


def indent(block: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line.strip() else line for line in block.splitlines())


def write_gateway_policy(
    tmp: Path,
    upstream: str | list[str],
    *,
    routes: str = DEFAULT_ROUTES,
    server_extra: str = "",
    upstream_extra: str = "",
    top_extra: str = "",
) -> tuple[Path, int, int]:
    """A policy file in `tmp` (POLICY_TEMPLATE) on free ports: (path, port, admin port)."""
    port, admin_port = free_port(), free_port()
    config = tmp / f"policy-{port}.yaml"
    config.write_text(POLICY_TEMPLATE.format(
        port=port, admin_port=admin_port, routes=routes.rstrip("\n"),
        upstream_key="url" if isinstance(upstream, str) else "targets",
        upstream=upstream if isinstance(upstream, str) else f"[{', '.join(upstream)}]",
        server_extra=indent(server_extra, 2), upstream_extra=indent(upstream_extra, 2),
        top_extra=top_extra))
    return config, port, admin_port


# A port can still be taken between free_port() and the gateway's bind (by a process outside
# this run); then the gateway is started again on other ports, at most this many times.
START_ATTEMPTS = 3


def start_gateway(
    tmp: Path,
    upstream: str | list[str],
    *,
    routes: str = DEFAULT_ROUTES,
    server_extra: str = "",
    upstream_extra: str = "",
    top_extra: str = "",
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
) -> Gateway:
    """`gateway run` on a POLICY_TEMPLATE policy (free ports), once it listens and, with
    `wait_ready`, answers /health."""
    for attempt in range(1, START_ATTEMPTS + 1):
        config, port, admin_port = write_gateway_policy(
            tmp, upstream, routes=routes, server_extra=server_extra,
            upstream_extra=upstream_extra, top_extra=top_extra)
        try:
            return run_gateway(config, port, admin_port, tmp / f"gateway-{port}.log", env, args,
                               wait_ready)
        except PortTaken:
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def run_policy_file(path: Path, upstream_url: str, tmp: Path,
                    env: dict[str, str] | None = None) -> Gateway:
    """A policy file that takes its listeners from ${GATEWAY_LISTEN} and
    ${GATEWAY_ADMIN_LISTEN} and its upstream from ${UPSTREAM_URL} (a shipped one, or one that
    extends it), on free ports."""
    for attempt in range(1, START_ATTEMPTS + 1):
        port, admin_port = free_port(), free_port()
        try:
            return run_gateway(path, port, admin_port, tmp / f"gateway-{port}.log",
                               env={"GATEWAY_LISTEN": f"127.0.0.1:{port}",
                                    "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                                    "UPSTREAM_URL": upstream_url, **(env or {})})
        except PortTaken:
            if attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def run_shipped(policy: str, upstream_url: str, tmp: Path,
                env: dict[str, str] | None = None) -> Gateway:
    """A shipped policy file as is, placed on free ports through its ${VAR}s."""
    return run_policy_file(ROOT / "policies" / policy, upstream_url, tmp, env)


class PortTaken(RuntimeError):
    """The gateway could not listen: its port was taken after it was chosen."""


def spawn_gateway(config: Path, log: Path, env: dict[str, str] | None = None,
                  args: tuple[str, ...] = ()) -> subprocess.Popen:
    """`python -m gateway run --config CONFIG ARGS`, its output to `log`; not waited for.
    Every gateway the tests run is started here."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config), *args],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, **(env or {})})


def run_gateway(config: Path, port: int, admin_port: int, log: Path,
                env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                wait_ready: bool = True) -> Gateway:
    """Start `gateway run` on an existing policy file and wait until it listens (and, with
    `wait_ready`, answers /health)."""
    proc = spawn_gateway(config, log, env, args)
    gw = Gateway(port, admin_port, proc, config, log)
    try:
        wait_for_port(admin_port, proc)
        wait_for_port(port, proc)
        if wait_ready:
            wait_until(lambda: _health_ok(gw))
    except Exception:
        stop(proc)
        text = gw.log_text()
        error = PortTaken if "address already in use" in text else RuntimeError
        raise error("gateway did not start:\n" + text) from None
    return gw


def gateway_cli(*args: str, env: dict[str, str] | None = None,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m gateway ARGS` to its end (check, explain, test, version, or a `run` that
    must fail), its output captured as text; `env` is added to the process environment."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _health_ok(gw: Gateway) -> bool:
    with contextlib.suppress(OSError):
        with urllib.request.urlopen(gw.admin_url + "/health", timeout=1) as resp:
            return resp.status == 200
    return False


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("VmHWM not found")
