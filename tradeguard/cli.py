"""The `tradeguard` command: demo, run, check-config, bench."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from tradeguard.config import load_config, masked, render_toml
from tradeguard.errors import ConfigError
from tradeguard.exits import EX_CONFIG, EX_OK
from tradeguard.logs import setup_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeguard",
        description="Keeps stop-losses working when the network does not.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the built-in scenario on loopback")
    demo.add_argument("--keep-running", action="store_true",
                      help="keep the API and status page up until Ctrl-C")
    demo.add_argument("--broker", default="", metavar="KIND",
                      help="tell it against a loopback stand-in of this broker (kite)")
    run = sub.add_parser("run", help="run the service in the foreground")
    run.add_argument("--config", help="TOML file (default: $TRADEGUARD_CONFIG)")
    check = sub.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--config", help="TOML file (default: $TRADEGUARD_CONFIG)")
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    bench = sub.add_parser("bench", help="measure throughput, latency and memory")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--quick", action="store_true", help="a run of a few seconds")
    chaos = sub.add_parser("chaos", help="inject faults at random under load, check invariants")
    chaos.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    chaos.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    chaos.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _print_problems(err: ConfigError) -> None:
    print(f"tradeguard: invalid configuration ({len(err.problems)} problem(s)):", file=sys.stderr)
    for problem in err.problems:
        print(f"  - {problem}", file=sys.stderr)


def check_config(path: str | None, as_json: bool) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as err:
        _print_problems(err)
        return EX_CONFIG
    data = masked(cfg)
    print(json.dumps(data, indent=2, ensure_ascii=False) if as_json else render_toml(data))
    if not cfg.feed.url:
        print("# note: feed.url is empty; `tradeguard run` needs it", file=sys.stderr)
    return EX_OK


def run(path: str | None) -> int:
    from actors.process import run_service

    setup_logging()  # before the config: its warnings (C13) are log lines too
    try:
        cfg = load_config(path, require_feed=True)
    except ConfigError as err:
        _print_problems(err)
        return EX_CONFIG
    return run_service(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.config, args.json)
    if args.command == "run":
        return run(args.config)
    if args.command == "demo":
        from tradeguard.tools.demo import run_demo

        return run_demo(keep_running=args.keep_running, broker=args.broker)
    if args.command == "bench":
        from tradeguard.tools.bench.run import run_bench

        return run_bench(quick=args.quick, as_json=args.json)
    if args.command == "chaos":
        from tradeguard.tools.chaos.run import run_chaos

        return run_chaos(duration=args.duration, seed=args.seed, as_json=args.json)
    return EX_CONFIG


if __name__ == "__main__":
    sys.exit(main())
