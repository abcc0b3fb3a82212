"""The command line: `gateway run | check | version`.

Exit codes: 0 success, 2 an invalid policy (each problem printed as FILE:LINE:COL: message),
1 anything else, with one line on stderr saying what.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys

from gateway import __version__
from gateway.config import Loaded, PolicyError, load_policy
from gateway.config.render import policy_yaml


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

    sub.add_parser("version", help="print the version")
    return parser


def _load(path: str | None) -> Loaded | int:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"gateway {__version__} (python {platform.python_version()})")
        return 0
    loaded = _load(args.config)
    if isinstance(loaded, int):
        return loaded
    if args.command == "check":
        if args.print_policy:
            print(policy_yaml(loaded.document), end="")
        else:
            print(f"{args.config}: ok ({len(loaded.policy.routes)} routes)")
        return 0

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from gateway import server  # imported late: `check` and `version` need no event loop

    # Until the event loop installs its own handler, SIGTERM means: nothing in flight, exit 0.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    workers = args.workers or loaded.policy.server.workers
    if args.worker or workers == 1:
        try:
            return server.serve(args.config, loaded, reuse_port=args.worker)
        except OSError as exc:
            print(f"gateway: cannot listen: {exc}", file=sys.stderr)
            return 1
    return server.supervise(args.config, workers, loaded.policy.server.timeouts.shutdown)
