"""python -m loadtests run SCENARIO | bench ...

  run SCENARIO   start the demo API (PostgreSQL), Redis and the gateway on the shipped production
                 policy on free 127.0.0.1 ports, run locust headless against the gateway, write
                 its CSV and HTML report, stop everything and check the plan's targets (p95 <
                 200 ms, errors < 0.1%, the brute-forcer refused as the login limit says).
                 Exit 0 when every target holds, 1 when one does not or the run failed, 3
                 when only latency failed while other processes kept the machine busy.
  bench ...      the side-by-side benchmark (loadtests/side_by_side.py), its own arguments.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

from loadtests.runner import MAX_DURATION_S, SCENARIOS, run
from loadtests.system import ROOT


def _say(line: str) -> None:
    print(line, flush=True)


def _duration(text: str) -> int:
    try:
        seconds = int(text[:-1]) * 60 if text.endswith("m") else int(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (30, 30s, 5m)") from None
    if not 1 <= seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(
            f"from 1 s to {MAX_DURATION_S // 60} min (an API client's pace stays under the "
            "policy's 1000 requests an hour that long)")
    return seconds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a locust scenario against the whole system",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="scenarios:\n" + "\n".join(
                           f"  {s.name:<11} {s.description}" for s in SCENARIOS.values()))
    r.add_argument("scenario", choices=SCENARIOS, metavar="SCENARIO",
                   help=", ".join(SCENARIOS))
    r.add_argument("--duration", type=_duration, metavar="N[s|m]",
                   help="run time instead of the scenario's own")
    r.add_argument("--out", type=Path, metavar="DIR",
                   help="where the reports go (default loadtests/results/SCENARIO-TIME/)")
    r.add_argument("--database-url", metavar="URL",
                   help="a migrated PostgreSQL database to use instead of starting one "
                        "(it is seeded with the demo data)")
    sub.add_parser("bench", help="the side-by-side benchmark (its own arguments follow)",
                   add_help=False)
    return p


def bench(argv: list[str]) -> int:
    try:
        side_by_side = importlib.import_module("loadtests.side_by_side")
    except ModuleNotFoundError as exc:
        if exc.name != "loadtests.side_by_side":
            raise
        print("python -m loadtests bench: loadtests/side_by_side.py is not in this checkout "
              "yet", file=sys.stderr)
        return 2
    return side_by_side.main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # everything after `bench` is the benchmark's own
        return bench(argv[1:])
    args = parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: everything started is stopped on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    scenario = SCENARIOS[args.scenario]
    out = args.out or ROOT / "loadtests" / "results" / (
        f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    _say(f"loadtests {scenario.name}: {scenario.description}; reports in {out}")
    try:
        outcome = run(scenario, out, duration_s=args.duration,
                      database_url=args.database_url, say=_say)
    except (RuntimeError, TimeoutError, OSError) as exc:
        _say(f"loadtests {scenario.name}: FAILED to run: {str(exc).splitlines()[0]} "
             f"(logs in {out})")
        return 1
    for check in outcome.checks:
        label = "ok  " if check.ok else "n/j " if check.inconclusive else "FAIL"
        _say(f"  {label} {check.name}: {check.detail}")
    for note in outcome.notes:
        _say(f"  note {note}")
    f, verdict = outcome.figures, outcome.verdict
    failed = ", ".join(c.name for c in outcome.checks if not c.ok)
    _say(f"loadtests {scenario.name}: {verdict} ({failed or 'all targets met'}): "
         f"{f['requests']} requests, p95 {f['p95_ms'] or 0:.0f} ms, "
         f"{f['failures']} errors, {f['expected_429']} expected 429s; report {out}/report.html")
    return {"PASS": 0, "INCONCLUSIVE": 3}.get(verdict, 1)


if __name__ == "__main__":
    sys.exit(main())
