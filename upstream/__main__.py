"""`python -m upstream serve [--host H] [--port P]`: run the demo API."""

from __future__ import annotations

import argparse
import sys

from aiohttp import web

from upstream.app import make_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upstream")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the demo API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        web.run_app(make_app(), host=args.host, port=args.port, print=None)
    except OSError as exc:
        print(f"upstream: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


raise SystemExit(main())
