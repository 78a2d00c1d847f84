"""The ``patrol-agent`` command line: the daemon and the technicians' tools.

Runs in the CLI process. Each subcommand imports what it needs when it runs,
so that ``patrol-agent config check`` starts fast on a Pi.
Exit codes: 0 success, 1 the check or operation failed, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import date
from pathlib import Path

from agent import __version__

DEFAULT_CONFIG = "/etc/patrol-agent/agent.yaml"


def _config_check(args: argparse.Namespace) -> int:
    from agent.config import load
    from agent.errors import ConfigError

    try:
        load(Path(args.file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(exc.problems)} problem(s)", file=sys.stderr)
        return 2
    print(f"{args.file}: OK")
    return 0


def _config_show(args: argparse.Namespace) -> int:
    import yaml

    from agent.config import load
    from agent.errors import ConfigError

    try:
        cfg = load(Path(args.file))
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    data = cfg.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _gnss_decode(args: argparse.Namespace) -> int:
    from agent.gnss_decode import run

    return run(args.file, args.date, summary=args.summary)


def _sim_gnss(args: argparse.Namespace) -> int:
    from drivers.gnss.simulate import replay_to_pty

    with contextlib.suppress(KeyboardInterrupt):
        replay_to_pty(Path(args.link), rate_hz=args.rate, laps=args.laps)
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.app import main as run_daemon

    return run_daemon(Path(args.config))


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patrol-agent", description="In-vehicle agent of the patrol management system."
    )
    parser.add_argument("--version", action="version", version=f"patrol-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=_run)

    config = sub.add_parser("config", help="check or show a config file")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser("check", help="validate: exit 0 if valid, 2 with every problem otherwise")
    check.add_argument("file")
    check.set_defaults(func=_config_check)
    show = config_sub.add_parser("show", help="print the effective config (defaults filled in, secrets redacted)")
    show.add_argument("file")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_config_show)

    gnss = sub.add_parser("gnss", help="GNSS receiver tools")
    gnss_sub = gnss.add_subparsers(dest="action", required=True, metavar="ACTION")
    decode = gnss_sub.add_parser("decode", help="decode a raw NMEA capture: one JSON object per epoch")
    decode.add_argument("file", nargs="?", default="-", help="capture file, or - for standard input (default)")
    decode.add_argument("--date", type=_date, help="date for streams that carry none (YYYY-MM-DD)")
    decode.add_argument("--summary", action="store_true", help="print the counters on standard error")
    decode.set_defaults(func=_gnss_decode)

    sim = sub.add_parser("sim", help="simulated hardware for demos and tests")
    sim_sub = sim.add_subparsers(dest="action", required=True, metavar="ACTION")
    sim_gnss = sim_sub.add_parser("gnss", help="replay a patrol route through a pty at its real rate")
    sim_gnss.add_argument("--link", required=True, help="path of the symlink to create to the pty device")
    sim_gnss.add_argument("--rate", type=float, default=1.0, help="epochs per second (default 1)")
    sim_gnss.add_argument("--laps", type=int, default=1000, help="laps of the route (default 1000)")
    sim_gnss.set_defaults(func=_sim_gnss)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
