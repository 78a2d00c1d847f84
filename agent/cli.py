"""The ``patrol-agent`` command line: the daemon and the technicians' tools.

Runs in the CLI process. Each subcommand imports what it needs when it runs,
so that ``patrol-agent config check`` starts fast on a Pi.
Exit codes, the same for every command (and listed in ``--help``): see
:data:`EXIT_CODES`. Ordinary errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from agent import __version__

DEFAULT_CONFIG = "/etc/patrol-agent/agent.yaml"
OK, FAILED, USAGE, NOT_RUNNING, NO_PERMISSION = 0, 1, 2, 3, 4
EXIT_CODES = """exit codes (every command):
  0  ok
  1  the check or operation failed (doctor found a FAIL, dispatch refused, no acknowledgement...)
  2  bad usage or config
  3  the daemon is not running (as systemctl); for `dispatch`: the vehicle did not answer in time
  4  permission denied on the daemon's control socket (join group patrol-agent)
"""
BUTTON_HELP = (
    "a panic button, NAME:PIN[:OPTION,...] (repeatable). NAME: lower-case letters, digits, _; PIN: the BCM GPIO "
    "number. OPTIONS: press (alarm at once) or hold (the default: held 1 s, against accidental presses), "
    "hold=SECONDS; active_low (the default: a button to ground, internal pull-up) or active_high (a button to "
    "3.3 V, internal pull-down); pull=none with active_low/active_high for an external resistor; debounce=MS "
    "(default 30). Example: --panic-button driver:17 --panic-button passenger:27:press,active_high"
)


def _config_check(args: argparse.Namespace) -> int:
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


def _config_show(args: argparse.Namespace) -> int:
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


def _gnss_decode(args: argparse.Namespace) -> int:
    from agent.gnss_decode import run

    return run(args.file, args.date, summary=args.summary)


def _sim_gnss(args: argparse.Namespace) -> int:
    from drivers.gnss.simulate import replay_to_pty

    with contextlib.suppress(KeyboardInterrupt):
        replay_to_pty(Path(args.link), rate_hz=args.rate, laps=args.laps)
    return 0


def _runtime_dir(args: argparse.Namespace) -> Path:
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


def _ask(args: argparse.Namespace, cmd: str, **fields: Any) -> list[dict[str, Any]]:
    from agent.daemon_client import ask

    return ask(_runtime_dir(args), cmd, **fields)


def _sim_press(args: argparse.Namespace) -> int:
    reply = _ask(args, "sim_press", name=args.name, hold=args.hold)
    ok = bool(reply and reply[-1].get("ok"))
    print("pressed" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return OK if ok else FAILED


def _sim_release(args: argparse.Namespace) -> int:
    reply = _ask(args, "sim_release", name=args.name)
    ok = bool(reply and reply[-1].get("ok"))
    print("released" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return OK if ok else FAILED


def _panic_test(args: argparse.Namespace) -> int:
    from agent.panic_check import run

    return run(_runtime_dir(args), timeout=args.timeout)


def _status(args: argparse.Namespace) -> int:
    from agent.daemon_client import status

    state = status(_runtime_dir(args))
    if args.json:
        print(json.dumps(state, indent=2))
        return OK
    from agent.tui import console, render_status

    console().print(render_status(state))
    return OK


def _monitor(args: argparse.Namespace) -> int:
    from agent.tui import monitor

    return monitor(_runtime_dir(args), once=args.once, interval=args.interval)


def _doctor(args: argparse.Namespace) -> int:
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


def _provision(args: argparse.Namespace) -> int:
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
    return _doctor(args)


def _watch(args: argparse.Namespace) -> int:
    from agent.dispatch import BrokerOptions, watch

    if args.capture is None:
        return watch(BrokerOptions.from_args(args), args.vehicle, auto_ack=args.auto_ack, alerts_only=args.alerts_only)
    with open(args.capture, "a", encoding="utf-8") as capture:
        return watch(BrokerOptions.from_args(args), args.vehicle, auto_ack=args.auto_ack,
                     alerts_only=args.alerts_only, capture=capture)


def _dispatch_send(args: argparse.Namespace) -> int:
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


def _dispatch_audit(args: argparse.Namespace) -> int:
    from agent.audit import run

    try:
        return run(Path(args.capture), as_json=args.json, out=sys.stdout)
    except OSError as exc:
        print(f"patrol-agent dispatch audit: {args.capture}: {exc.strerror or exc}", file=sys.stderr)
        return USAGE


def _broker_options(parser: argparse.ArgumentParser) -> None:
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


def _daemon_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"the daemon's config (default {DEFAULT_CONFIG})")
    parser.add_argument("--runtime-dir", help="the daemon's runtime directory (instead of reading --config)")


def _run(args: argparse.Namespace) -> int:
    from agent.app import main as run_daemon

    return run_daemon(Path(args.config))


def _panic_button(text: str) -> dict[str, Any]:
    from agent.provision import panic_button

    return panic_button(text)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="patrol-agent", description="In-vehicle agent of the patrol management system.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"patrol-agent {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=_run)

    config = sub.add_parser("config", help="check or show a config file")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="apply the daemon's start-up checks (schema, TLS files, certificate, key): exit 0 if "
                      "`run` would start, 2 with every problem and its line otherwise")
    check.add_argument("file", help="the config file (e.g. /etc/patrol-agent/agent.yaml)")
    check.set_defaults(func=_config_check)
    show = config_sub.add_parser("show", help="print the effective config (defaults filled in, secrets redacted)")
    show.add_argument("file", help="the config file")
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
    press = sim_sub.add_parser("press", help="press a simulated input of the running daemon")
    press.add_argument("name", help="the input's name in the config (inputs.panic_buttons / digital)")
    press.add_argument("--hold", type=float, help="release after this many seconds")
    _daemon_options(press)
    press.set_defaults(func=_sim_press)
    release = sim_sub.add_parser("release", help="release a simulated input of the running daemon")
    release.add_argument("name", help="the input's name in the config (inputs.panic_buttons / digital)")
    _daemon_options(release)
    release.set_defaults(func=_sim_release)

    panic = sub.add_parser("panic", help="panic alarm tools")
    panic_sub = panic.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = panic_sub.add_parser("test", help="send a test alarm through the whole path and show each stage")
    test.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for dispatch's acknowledgement before giving up (default 60)")
    _daemon_options(test)
    test.set_defaults(func=_panic_test)

    status = sub.add_parser("status", help="the running daemon's state")
    _daemon_options(status)
    status.add_argument("--json", action="store_true", help="the daemon's state as JSON (for scripts)")
    status.set_defaults(func=_status)

    monitor = sub.add_parser("monitor", help="a live view of the unit (fix, link, outbox, inputs, alerts)")
    _daemon_options(monitor)
    monitor.add_argument("--once", action="store_true", help="print one frame and exit")
    monitor.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    monitor.set_defaults(func=_monitor)

    doctor = sub.add_parser("doctor", help="check the unit: config, receiver, GPIO, broker, clock, disk, service")
    doctor.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    doctor.add_argument("--json", action="store_true", help="the checks as JSON (for scripts)")
    doctor.add_argument("--serial-seconds", type=float, default=2.5,
                        help="how long to listen to the receiver at its configured rate (default 2.5)")
    doctor.set_defaults(func=_doctor)

    provision = sub.add_parser(
        "provision", help="install this vehicle's certificate and key, write its config, then run doctor",
        description="Copies the CA, certificate and key into /etc/patrol-agent (key 0640 root:patrol-agent), "
                    "writes /etc/patrol-agent/agent.yaml with absolute paths, and refuses to write what "
                    "`patrol-agent run` would refuse (the same check). Then runs doctor.")
    provision.add_argument("--config", help="where to write the config (default ROOT/etc/patrol-agent/agent.yaml)")
    provision.add_argument("--root", help="install under this directory instead of / (a lab or a test); the "
                                          "config names the files there")
    provision.add_argument("--vehicle-id", required=True, help="the vehicle id: its certificate's CN")
    provision.add_argument("--unit", required=True, help="owning unit or station")
    provision.add_argument("--directorate", required=True, help="border, general, traffic...")
    provision.add_argument("--broker", action="append", required=True, help="mqtts://host:8883 (repeatable)")
    provision.add_argument("--ca", help="the fleet CA's certificate (copied to ca.crt)")
    provision.add_argument("--cert", help="this vehicle's client certificate (copied to vehicle.crt)")
    provision.add_argument("--key", help="its private key (copied to vehicle.key, 0640 root:patrol-agent)")
    provision.add_argument("--panic-button", action="append", default=[], metavar="NAME:PIN[:OPTIONS]",
                           type=_panic_button, help=BUTTON_HELP)
    provision.add_argument("--gnss-port", default="/dev/serial0", help="the receiver (default /dev/serial0)")
    provision.add_argument("--baudrate", type=int, default=9600, help="the receiver's baud rate (default 9600)")
    provision.add_argument("--state-dir", help="outbox and state (default /var/lib/patrol-agent)")
    provision.add_argument("--runtime-dir", help="control socket (default /run/patrol-agent)")
    provision.add_argument("--lab", action="store_true",
                           help="lab set-up: allow plain TCP and no certificate (warned at every start)")
    provision.add_argument("--simulation", action="store_true", help="mock GPIO (demo and tests)")
    provision.add_argument("--force", action="store_true", help="replace an existing config")
    provision.add_argument("--no-doctor", action="store_true", help="do not run doctor afterwards")
    provision.add_argument("--serial-seconds", type=float, default=2.5, help="doctor: how long to listen to the "
                                                                              "receiver")
    provision.set_defaults(func=_provision)

    watch = sub.add_parser("watch", help="dispatch's view: print what the vehicles send", allow_abbrev=False)
    _broker_options(watch)
    watch.add_argument("--vehicle", default="+", help="one vehicle id (default all)")
    watch.add_argument("--auto-ack", action="store_true", help="acknowledge every alert (demo)")
    watch.add_argument("--alerts-only", action="store_true", help="print alerts only")
    watch.add_argument("--capture", metavar="FILE", help="also append every message to FILE as a JSON line "
                                                         "(for `dispatch audit`)")
    watch.set_defaults(func=_watch)

    dispatch = sub.add_parser("dispatch", help="dispatch side: acknowledge or clear an alert, wait for the answer")
    dispatch_sub = dispatch.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("ack", "acknowledge an alert (ack_alert on the vehicle's cmd topic)"),
                         ("clear", "clear (close) an alert (clear_alert on the vehicle's cmd topic)")):
        cmd = dispatch_sub.add_parser(action, help=text, epilog=EXIT_CODES, allow_abbrev=False,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("vehicle", help="the vehicle's id")
        cmd.add_argument("alert_id", help="the alert's id (from watch or status)")
        cmd.add_argument("--operator", default="dispatcher", help="who acts, as the vehicle reports it")
        cmd.add_argument("--timeout", type=float, default=10.0,
                         help="seconds to wait for the vehicle's reply (default 10; exit 3 without one)")
        cmd.add_argument("--valid-for", type=float, default=60.0,
                         help="seconds the command stays valid, at most 3600 (default 60)")
        _broker_options(cmd)
        cmd.set_defaults(func=_dispatch_send)
    audit = dispatch_sub.add_parser("audit", allow_abbrev=False,
                                    help="per vehicle and boot, the messages missing or twice in a capture (exit 1 "
                                         "if any is missing)")
    audit.add_argument("capture", help="JSON lines of received messages (watch --capture FILE, or mosquitto_sub "
                                       "-F %%J)")
    audit.add_argument("--json", action="store_true", help="the report as JSON")
    audit.set_defaults(func=_dispatch_audit)
    return parser


def main(argv: list[str] | None = None) -> int:
    from agent.daemon_client import ToolError

    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ToolError as exc:
        print(f"patrol-agent {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        sys.stderr.close()
        return OK
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
