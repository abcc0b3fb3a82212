"""Start and stop the real processes the tests talk to: gateway and test upstream."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
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


def start_upstream() -> Upstream:
    port, raw_port = free_port(), free_port()
    proc = start_ready("tests.support.upstream", "--port", str(port),
                       "--raw-port", str(raw_port))
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
    port, admin_port = free_port(), free_port()
    config = tmp / f"policy-{port}.yaml"
    config.write_text(POLICY_TEMPLATE.format(
        port=port, admin_port=admin_port, routes=routes.rstrip("\n"),
        upstream_key="url" if isinstance(upstream, str) else "targets",
        upstream=upstream if isinstance(upstream, str) else f"[{', '.join(upstream)}]",
        server_extra=indent(server_extra, 2), upstream_extra=indent(upstream_extra, 2),
        top_extra=top_extra))
    return run_gateway(config, port, admin_port, tmp / f"gateway-{port}.log", env, args,
                       wait_ready)


def run_gateway(config: Path, port: int, admin_port: int, log: Path,
                env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                wait_ready: bool = True) -> Gateway:
    """Start `gateway run` on an existing policy file and wait until it listens (and, with
    `wait_ready`, answers /health)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "run", "--config", str(config), *args],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    gw = Gateway(port, admin_port, proc, config, log)
    try:
        wait_for_port(admin_port, proc)
        wait_for_port(port, proc)
        if wait_ready:
            wait_until(lambda: _health_ok(gw))
    except Exception:
        stop(proc)
        raise RuntimeError("gateway did not start:\n" + gw.log_text()) from None
    return gw


def run_shipped(policy: str, upstream_url: str, tmp: Path,
                env: dict[str, str] | None = None) -> Gateway:
    """A shipped policy file as is, placed on free ports through its ${VAR}s."""
    port, admin_port = free_port(), free_port()
    return run_gateway(ROOT / "policies" / policy, port, admin_port,
                       tmp / f"gateway-{port}.log",
                       env={"GATEWAY_LISTEN": f"127.0.0.1:{port}",
                            "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                            "UPSTREAM_URL": upstream_url, **(env or {})})


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
