"""The command line: `gateway run | check | explain | test | version`.

Exit codes: 0 success, 2 an invalid policy or cases file (each problem printed as
FILE:LINE:COL: message), 1 a failed policy test case or anything else, with one line on stderr
saying what.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
from typing import TYPE_CHECKING

from gateway import DEFAULT_PEER, __version__

# Each command imports what it needs where it runs: `version` needs no policy, `run` neither
# explain nor the test cases' reader.
if TYPE_CHECKING:
    from gateway.config import Loaded


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Reverse-proxy security gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    config_help = "policy file (default: $GATEWAY_CONFIG)"

    run = sub.add_parser("run", help="serve until SIGTERM; SIGHUP reloads the policy")
    run.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    run.add_argument("--workers", type=int, help="worker processes (overrides server.workers)")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--log-level", default=os.environ.get("GATEWAY_LOG_LEVEL", "INFO"))

    check = sub.add_parser("check", help="validate a policy file")
    check.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    check.add_argument("--print", action="store_true", dest="print_policy",
                       help="print the merged, interpolated policy (secrets redacted)")

    explain = sub.add_parser("explain", help="what the gateway would do with one request")
    explain.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    explain.add_argument("--client-ip", default=DEFAULT_PEER,
                         help=f"the TCP peer the request comes from (default {DEFAULT_PEER})")
    explain.add_argument("-H", "--header", action="append", default=[], metavar="'Name: value'")
    explain.add_argument("--json", action="store_true", help="print the report as JSON")
    explain.add_argument("method")
    explain.add_argument("url", help="a path (/api/x?y=1) or an absolute URL")

    test = sub.add_parser("test", help="run declarative policy test cases")
    test.add_argument("--config", default=os.environ.get("GATEWAY_CONFIG"), help=config_help)
    test.add_argument("cases", help="a YAML file of cases")

    sub.add_parser("version", help="print the version")
    return parser


def _load(path: str | None) -> Loaded | int:
    from gateway.config import PolicyError, load_policy

    if not path:
        print("gateway: no policy file: pass --config FILE or set GATEWAY_CONFIG",
              file=sys.stderr)
        return 1
    try:
        loaded = load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    for warning in loaded.warnings:
        print(warning, file=sys.stderr)
    return loaded


def _explain(args: argparse.Namespace, loaded: Loaded) -> int:
    import json

    from gateway.compiled import CompiledPolicy
    from gateway.explain import DescribedRequest, explain, format_report
    from gateway.jwks import fetch_once

    headers = []
    for text in args.header:
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            print(f"gateway: -H wants 'Name: value', got {text!r}", file=sys.stderr)
            return 1
        headers.append((name.strip(), value.strip()))
    request = DescribedRequest(args.method, args.url, tuple(headers), args.client_ip)
    compiled = CompiledPolicy.build(loaded)
    if compiled.verifier is not None and compiled.verifier.url is not None:
        problem = fetch_once(compiled.verifier)  # as `gateway run` would have by now
        if problem is not None:
            print(f"gateway: {problem}", file=sys.stderr)
    report = explain(compiled, request)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _test(args: argparse.Namespace, loaded: Loaded) -> int:
    from pathlib import Path

    from gateway.compiled import CompiledPolicy
    from gateway.config import PolicyError
    from gateway.policytest import check_case, load_cases

    try:
        cases = load_cases(Path(args.cases))
    except PolicyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    compiled = CompiledPolicy.build(loaded)  # exactly as `gateway run` compiles it
    results = [(c, check_case(compiled, c)) for c in cases]
    failed = 0
    for case, failures in results:
        if failures:
            failed += 1
            print(f"FAIL {case.name}")
            for failure in failures:
                print(f"     {failure}")
        else:
            print(f"ok   {case.name}")
    print(f"{len(cases) - failed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # `gateway explain ... | head`: the reader left; nothing more to say, and nothing to
        # say it on (Python would complain again while flushing stdout at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"gateway {__version__} (python {platform.python_version()})")
        return 0
    if args.command == "run":
        # a SIGHUP before the reload handler exists would kill the process (its default
        # action); held pending instead, it reloads once the handler is in place
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    if args.command == "explain":
        return _explain(args, loaded)
    if args.command == "test":
        return _test(args, loaded)
    if args.command == "check":
        if args.print_policy:
            from gateway.config.render import policy_yaml

            print(policy_yaml(loaded.document), end="")
        else:
            print(f"{args.config}: ok ({len(loaded.policy.routes)} routes)")
        return 0

    import logging

    from gateway.config.loader import counts_requests, workers_without_redis

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # Until the event loop installs its own handler, SIGTERM means: nothing in flight, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    workers = args.workers or loaded.policy.server.workers
    policy = loaded.policy
    if workers > 1 and not policy.redis.url and counts_requests(policy.routes,
                                                                  policy.csp_reports):
        print(f"gateway: {workers_without_redis(workers)}", file=sys.stderr)
        return 2
    # imported late: `check` and `version` need no event loop
    if args.worker or workers == 1:
        from gateway import server

        try:
            return server.serve(args.config, loaded, reuse_port=args.worker)
        except OSError as exc:
            print(f"gateway: cannot listen: {exc}", file=sys.stderr)
            return 1
    from gateway import supervisor

    return supervisor.supervise(args.config, workers, loaded.policy.server.timeouts.shutdown)
