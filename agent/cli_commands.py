"""The handlers of the ``patrol-agent`` subcommands (agent.cli builds the parser and calls them).

Each imports what it needs when it runs, so that a technician's command starts
fast on a Pi and the daemon (``run``) loads none of the tools.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = "/etc/patrol-agent/agent.yaml"
OK, FAILED, USAGE, NOT_RUNNING, NO_PERMISSION = 0, 1, 2, 3, 4
EXIT_CODES = """exit codes (every command):
  0  ok
  1  the check or operation failed (doctor found a FAIL, dispatch refused, no acknowledgement...)
  2  bad usage or config
  3  the daemon is not running (as systemctl); for `dispatch`: the vehicle did not answer in time
  4  permission denied on the daemon's control socket (join group patrol-agent)
"""


def config_check(args: argparse.Namespace) -> int:
    from agent.security import check

    checked = check(Path(args.file))  # the check `run` makes before it starts
    for warning in checked.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if checked.problems:
        for problem in checked.problems:
            print(problem, file=sys.stderr)
        print(f"{args.file}: {len(checked.problems)} problem(s): `patrol-agent run` would refuse it", file=sys.stderr)
        return 2
    print(f"{args.file}: OK" + (f" ({len(checked.warnings)} warning(s))" if checked.warnings else ""))
    return 0


def config_show(args: argparse.Namespace) -> int:
    import yaml

    from agent.config_load import parse

    loaded = parse(Path(args.file))
    if loaded.problems or loaded.cfg is None:
        for problem in loaded.problems:
            print(problem, file=sys.stderr)
        return 2
    for override in loaded.overrides:
        print(f"# from the environment: {override}", file=sys.stderr)
    data = loaded.cfg.redacted()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def gnss_decode(args: argparse.Namespace) -> int:
    from agent.gnss_decode import run

    return run(args.file, args.date, summary=args.summary)


def sim_gnss(args: argparse.Namespace) -> int:
    from drivers.gnss.simulate import replay_to_pty

    with contextlib.suppress(KeyboardInterrupt):
        replay_to_pty(Path(args.link), rate_hz=args.rate, laps=args.laps)
    return 0


def runtime_dir(args: argparse.Namespace) -> Path:
    if getattr(args, "runtime_dir", None):
        return Path(args.runtime_dir)
    from agent.config import load
    from agent.errors import ConfigError

    try:
        return load(Path(args.config)).runtime_dir
    except ConfigError as exc:
        problem = exc.problems[0]
        print(f"patrol-agent: {problem if problem.startswith(str(args.config)) else f'{args.config}: {problem}'}",
              file=sys.stderr)
        raise SystemExit(USAGE) from None


def ask(args: argparse.Namespace, cmd: str, **fields: Any) -> list[dict[str, Any]]:
    from agent.daemon_client import ask

    return ask(runtime_dir(args), cmd, **fields)


def sim_press(args: argparse.Namespace) -> int:
    reply = ask(args, "sim_press", name=args.name, hold=args.hold)
    ok = bool(reply and reply[-1].get("ok"))
    print("pressed" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return OK if ok else FAILED


def sim_release(args: argparse.Namespace) -> int:
    reply = ask(args, "sim_release", name=args.name)
    ok = bool(reply and reply[-1].get("ok"))
    print("released" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return OK if ok else FAILED


def panic_test(args: argparse.Namespace) -> int:
    from agent.panic_check import run

    return run(runtime_dir(args), timeout=args.timeout)


def status(args: argparse.Namespace) -> int:
    from agent.daemon_client import status

    state = status(runtime_dir(args))
    if args.json:
        print(json.dumps(state, indent=2))
        return OK
    from agent.tui import console, render_status

    console().print(render_status(state))
    return OK


def monitor(args: argparse.Namespace) -> int:
    from agent.tui import monitor

    return monitor(runtime_dir(args), once=args.once, interval=args.interval)


def doctor(args: argparse.Namespace) -> int:
    from agent import doctor
    from agent.checks import Check
    from agent.tui import print_check, print_doctor, progress_printer

    if args.json:
        report = doctor.run(Path(args.config), serial_seconds=args.serial_seconds)
        print(json.dumps([c.as_dict() for c in report.checks], indent=2))
        return FAILED if report.failed else OK
    progress = progress_printer(sys.stderr)

    def show(check: Check) -> None:  # each check as soon as it is made
        progress("")
        print_check(check, sys.stdout)

    report = doctor.run(Path(args.config), serial_seconds=args.serial_seconds, progress=progress, on_check=show)
    print_doctor(report, sys.stdout, checks=False)
    return FAILED if report.failed else OK


def provision(args: argparse.Namespace) -> int:
    from agent import provision
    from agent.errors import ConfigError

    try:
        path, warnings = provision.write(args)
    except FileExistsError as exc:
        print(f"patrol-agent provision: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"patrol-agent provision: {problem}", file=sys.stderr)
        print("patrol-agent provision: nothing written: `patrol-agent run` would refuse this config", file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not args.panic_button:
        print("warning: no panic button configured (--panic-button NAME:PIN)", file=sys.stderr)
    print(f"wrote {path}")
    if args.no_doctor:
        return 0
    args.config = str(path)
    args.json = False
    return doctor(args)


def watch(args: argparse.Namespace) -> int:
    from agent.dispatch import BrokerOptions, watch

    if args.capture is None:
        return watch(BrokerOptions.from_args(args), args.vehicle, auto_ack=args.auto_ack, alerts_only=args.alerts_only)
    with open(args.capture, "a", encoding="utf-8") as capture:
        return watch(BrokerOptions.from_args(args), args.vehicle, auto_ack=args.auto_ack,
                     alerts_only=args.alerts_only, capture=capture)


def dispatch_send(args: argparse.Namespace) -> int:
    from agent.dispatch import BrokerOptions, send_command

    verb = "ack_alert" if args.action == "ack" else "clear_alert"
    reply = send_command(BrokerOptions.from_args(args), args.vehicle, verb,
                         {"alert_id": args.alert_id, "operator": args.operator},
                         timeout=args.timeout, valid_s=args.valid_for)
    if reply is None:
        print(f"{verb} {args.alert_id}: no reply from {args.vehicle} within {args.timeout:g} s "
              "(vehicle offline? the command waits at the broker until it expires)", file=sys.stderr)
        return NOT_RUNNING
    verdict = "ok" if reply.get("ok") else "refused"
    print(f"{args.vehicle} {verdict}: {verb} {args.alert_id}: {reply.get('detail') or ''}".rstrip(": "))
    return OK if reply.get("ok") else FAILED


def dispatch_audit(args: argparse.Namespace) -> int:
    from agent.audit import run

    try:
        return run(Path(args.capture), as_json=args.json, out=sys.stdout)
    except OSError as exc:
        print(f"patrol-agent dispatch audit: {args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return USAGE


def broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="broker URL, mqtts://host:8883 for TLS (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--prefix", default="patrol", help="topic prefix (default patrol)")
    parser.add_argument("--client-id", help="MQTT client id (default: the tool's name and a random suffix, "
                        "new for every run)")
    parser.add_argument("--ca", help="CA certificate to verify the broker (PEM)")
    parser.add_argument("--cert", help="dispatch's client certificate (PEM)")
    parser.add_argument("--key", help="the client certificate's private key (PEM)")
    parser.add_argument("--username", help="MQTT user name")
    parser.add_argument("--password-file", help="file holding the MQTT password (or set PATROL_DISPATCH_PASSWORD); "
                        "never on the command line")


def daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the daemon's config (default {DEFAULT_CONFIG})")
    parser.add_argument("--runtime-dir", help="the daemon's runtime directory (instead of reading --config)")


def run(args: argparse.Namespace) -> int:
    from agent.app import main as run_daemon

    return run_daemon(Path(args.config))


def panic_button(text: str) -> dict[str, Any]:
    from agent.provision import panic_button

    return panic_button(text)


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None
