"""The gateway's shape (docs/architecture.md): every module imports alone in a fresh
interpreter, and imports run one way through the layers

    tokens -> settings -> config -> decisions -> io

(a module may import its own layer and those below it, never one above)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gateway"
LAYERS = ("tokens", "settings", "config", "decisions", "io")

# the grammar everything shares; pure modules that import nothing of the gateway above them
TOKENS = {"gateway", "gateway.tokens", "gateway.units", "gateway.loop_turns",
          "gateway.http.normalize", "gateway.redis.endpoint"}
# pure functions of the compiled policy and a request: no socket, no event loop
DECISIONS = {"gateway.routing", "gateway.access", "gateway.identity", "gateway.cors",
             "gateway.security_headers",
             "gateway.csp_reports", "gateway.admission", "gateway.explain", "gateway.policytest",
             "gateway.compiled", "gateway.plan", "gateway.http.path_matching",
             "gateway.http.client_ip", "gateway.http.forwarding", "gateway.http.rewrite",
             "gateway.ratelimit.algorithms",
             "gateway.ratelimit.keys", "gateway.ratelimit.headers",
             # the data plane's pure parts: head checks, response bytes, frame headers
             "gateway.http.framing", "gateway.http.response", "gateway.http.problem",
             "gateway.http.ws_frames"}


def modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def layer_of(module: str) -> str:
    if module in TOKENS:
        return "tokens"
    if module.startswith("gateway.settings"):
        return "settings"
    if module.startswith("gateway.config"):
        return "config"
    if module in DECISIONS:
        return "decisions"
    path = PACKAGE.joinpath(*module.split(".")[1:])
    if (path / "__init__.py").is_file() and not _imports(module):
        return "tokens"  # an empty package marker: importing it imports nothing
    return "io"


def _source(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported gateway module, line) for every import statement in `module`, type-only
    ones included: a dependency is a dependency."""
    tree = ast.parse(_source(module).read_text())
    known = set(modules())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names
                      if alias.name.split(".")[0] == "gateway"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "gateway":
            for alias in node.names:  # `from gateway.x import y` may import module gateway.x.y
                name = f"{node.module}.{alias.name}"
                found.append((name if name in known else node.module, node.lineno))
    return found


def back_edges() -> list[str]:
    out = []
    for module in modules():
        here = LAYERS.index(layer_of(module))
        for target, line in _imports(module):
            if LAYERS.index(layer_of(target)) > here:
                out.append(f"{_source(module).relative_to(ROOT)}:{line}: {module} "
                           f"({layer_of(module)}) imports {target} ({layer_of(target)})")
    return out


def test_imports_run_one_way_through_the_layers() -> None:
    assert back_edges() == []


def test_the_layer_check_sees_a_back_edge(tmp_path: Path, monkeypatch) -> None:
    """The check itself can fail: a settings module importing the router is reported with its
    file and line."""
    source = _source("gateway.settings.policy")
    original = source.read_text()
    real_read = Path.read_text

    def patched(self: Path, *args, **kwargs) -> str:
        if self == source:
            return original + "\nfrom gateway.routing import Router\n"
        return real_read(self, *args, **kwargs)

    before = back_edges()
    monkeypatch.setattr(Path, "read_text", patched)
    edges = [edge for edge in back_edges() if edge not in before]
    assert len(edges) == 1
    assert edges[0].startswith("gateway/settings/policy.py:")
    assert "imports gateway.routing (decisions)" in edges[0]


def test_every_layer_is_populated() -> None:
    """The classification is not vacuous: each layer holds modules that exist."""
    by_layer = {layer: [m for m in modules() if layer_of(m) == layer] for layer in LAYERS}
    assert all(by_layer.values()), by_layer
    assert {"gateway.handler", "gateway.server", "gateway.proxy.forwarder"} <= set(by_layer["io"])


# ... and none loads aiohttp: the gateway runs on its own HTTP server and client (admin.py
# says why), so no private aiohttp API can break it and no pure-Python parser can serve for it.
#
# One interpreter per shard imports the third-party libraries the gateway uses (never a gateway
# module, never aiohttp), then forks a child per module; the child imports that module alone and
# exits. A child starts with no gateway module loaded, as a fresh interpreter would, but
# without paying for Python's start-up and for yaml, asyncio or prometheus_client again: ~100
# forks instead of ~100 interpreters (each ~0.2 s of CPU).
PRELOAD = ("asyncio", "dataclasses", "logging", "ssl", "yaml", "prometheus_client", "multidict",
           "httptools", "uvloop")
IMPORT_ALONE = """import importlib, os, sys
preload, modules = sys.argv[1].split(","), sys.argv[2:]
for name in preload:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == "gateway" or m.startswith(("gateway.", "aiohttp")))
if loaded:
    sys.exit(f"the preload imported {loaded}")
for module in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            error = "imports aiohttp" if any(
                m == "aiohttp" or m.startswith("aiohttp.") for m in sys.modules) else ""
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
        os.write(write, error.encode())
        os._exit(1 if error else 0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    if status != 0 or error:
        print(f"{module}: {error or f'child exited with status {status}'}")
"""


def _import_each_alone(mine: list[str]) -> list[str]:
    """`module: error` for each of `mine` that fails to import alone (or loads aiohttp)."""
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALONE, ",".join(PRELOAD), *mine], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.integration  # fresh interpreters (forked before any gateway module is imported)
@pytest.mark.parametrize("batch", range(4))
def test_every_module_imports_alone_in_a_fresh_interpreter(batch: int) -> None:
    mine = modules()[batch::4]
    assert mine and _import_each_alone(mine) == []


@pytest.mark.integration
def test_the_import_check_fails_on_a_cycle_and_on_aiohttp(tmp_path: Path) -> None:
    """The check above can fail: a module that only imports after its cycle partner, one that
    loads aiohttp, and one that raises are each reported, with the error."""
    pkg = tmp_path / "gateway_cycle_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from gateway_cycle_probe.b import B\nA = 1\n")
    (pkg / "b.py").write_text("from gateway_cycle_probe.a import A\nB = 2\n")
    (pkg / "web.py").write_text("import aiohttp\n")
    (pkg / "boom.py").write_text("raise RuntimeError('boom')\n")
    proc = subprocess.run([sys.executable, "-c", IMPORT_ALONE, ",".join(PRELOAD),
                           "gateway_cycle_probe.a",
                           "gateway_cycle_probe.web", "gateway_cycle_probe.boom", "json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    failed = dict(line.split(": ", 1) for line in proc.stdout.splitlines())
    assert set(failed) == {"gateway_cycle_probe.a", "gateway_cycle_probe.web",
                           "gateway_cycle_probe.boom"}
    assert "partially initialized module" in failed["gateway_cycle_probe.a"]
    assert failed["gateway_cycle_probe.web"] == "imports aiohttp"
    assert failed["gateway_cycle_probe.boom"] == "RuntimeError: boom"
