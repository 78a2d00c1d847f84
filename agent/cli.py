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
from typing import Any

from agent import __version__

DEFAULT_CONFIG = "/etc/patrol-agent/agent.yaml"
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
        raise SystemExit(f"patrol-agent: {args.config}: {exc.problems[0]}") from None


def _ask(args: argparse.Namespace, cmd: str, **fields: Any) -> list[dict[str, object]]:
    from agent.control import request

    try:
        return list(request(_runtime_dir(args), cmd, **fields))
    except OSError as exc:
        raise SystemExit(f"patrol-agent: cannot reach the daemon ({exc.strerror or exc}); is it running?") from None


def _sim_press(args: argparse.Namespace) -> int:
    reply = _ask(args, "sim_press", name=args.name, hold=args.hold)
    ok = bool(reply and reply[-1].get("ok"))
    print("pressed" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return 0 if ok else 1


def _sim_release(args: argparse.Namespace) -> int:
    reply = _ask(args, "sim_release", name=args.name)
    ok = bool(reply and reply[-1].get("ok"))
    print("released" if ok else f"error: {reply[-1].get('error') if reply else 'no answer'}")
    return 0 if ok else 1


def _panic_test(args: argparse.Namespace) -> int:
    import time

    from agent.control import request

    began = time.monotonic()
    stages: list[str] = []
    try:
        for reply in request(_runtime_dir(args), "panic_test", timeout=args.timeout):
            if "stage" not in reply:
                print(f"error: {reply.get('error')}")
                return 1
            stage = str(reply["stage"])
            stages.append(stage)
            extra = f" by {reply['operator']}" if reply.get("operator") else ""
            print(f"{time.monotonic() - began:6.2f} s  {stage:<13} test alarm {reply['alert_id']}{extra}", flush=True)
    except TimeoutError:
        pass
    except OSError as exc:
        print(f"patrol-agent: cannot reach the daemon ({exc.strerror or exc}); is it running?", file=sys.stderr)
        return 2
    if "acknowledged" in stages:
        return 0
    missing = "delivered to the broker" if "delivered" not in stages else "acknowledged by dispatch"
    print(f"not {missing} within {args.timeout:g} s")
    return 1


def _status(args: argparse.Namespace) -> int:
    reply = _ask(args, "status")
    if not reply or not reply[-1].get("ok"):
        print(f"error: {reply[-1].get('error') if reply else 'no answer'}")
        return 1
    if args.json:
        print(json.dumps(reply[-1]["status"], indent=2))
        return 0
    from agent.tui import console, render_status

    console().print(render_status(reply[-1]["status"]))  # type: ignore[arg-type]
    return 0


def _monitor(args: argparse.Namespace) -> int:
    from agent.tui import monitor

    return monitor(_runtime_dir(args), once=args.once)


def _doctor(args: argparse.Namespace) -> int:
    from agent import doctor

    report = doctor.run(Path(args.config), serial_seconds=args.serial_seconds)
    if args.json:
        print(json.dumps([c.as_dict() for c in report.checks], indent=2))
    else:
        from agent.tui import console, render_doctor

        out = console()
        if out.is_terminal:
            out.print(render_doctor(report))
        else:
            for check in report.checks:
                hint = f"  -> {check.hint}" if check.hint else ""
                print(f"{check.result}  {check.name}: {check.detail}{hint}")
    return 1 if report.failed else 0


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
    from agent.dispatch import connect, watch

    client = connect(args.broker, client_id=args.client_id, ca=args.ca, cert=args.cert, key=args.key,
                     username=args.username, password=args.password)
    watch(client, args.prefix, args.vehicle, auto_ack=args.auto_ack, alerts_only=args.alerts_only)
    return 0


def _dispatch_send(args: argparse.Namespace) -> int:
    from agent.dispatch import connect, send_ack

    client = connect(args.broker, client_id=args.client_id, ca=args.ca, cert=args.cert, key=args.key,
                     username=args.username, password=args.password)
    action = "acknowledge" if args.action == "ack" else "clear"
    send_ack(client, f"{args.prefix}/{args.vehicle}/alert/ack", args.alert_id, action, args.operator)
    client.loop_stop()
    client.disconnect()
    print(f"{action} sent for alert {args.alert_id} of {args.vehicle}")
    return 0


def _broker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (mqtts:// for TLS)")
    parser.add_argument("--prefix", default="patrol", help="topic prefix (default patrol)")
    parser.add_argument("--client-id", default="patrol-dispatch-tool")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--username")
    parser.add_argument("--password")


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
        prog="patrol-agent", description="In-vehicle agent of the patrol management system."
    )
    parser.add_argument("--version", action="version", version=f"patrol-agent {__version__}")
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
    press.add_argument("name")
    press.add_argument("--hold", type=float, help="release after this many seconds")
    _daemon_options(press)
    press.set_defaults(func=_sim_press)
    release = sim_sub.add_parser("release", help="release a simulated input of the running daemon")
    release.add_argument("name")
    _daemon_options(release)
    release.set_defaults(func=_sim_release)

    panic = sub.add_parser("panic", help="panic alarm tools")
    panic_sub = panic.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = panic_sub.add_parser("test", help="send a test alarm through the whole path and show each stage")
    test.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for dispatch (default 60)")
    _daemon_options(test)
    test.set_defaults(func=_panic_test)

    status = sub.add_parser("status", help="the running daemon's state")
    _daemon_options(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    monitor = sub.add_parser("monitor", help="a live view of the unit (fix, link, outbox, inputs, alerts)")
    _daemon_options(monitor)
    monitor.add_argument("--once", action="store_true", help="print one frame and exit")
    monitor.set_defaults(func=_monitor)

    doctor = sub.add_parser("doctor", help="check the unit: config, receiver, GPIO, broker, clock, disk, service")
    doctor.add_argument("--config", default=DEFAULT_CONFIG)
    doctor.add_argument("--json", action="store_true")
    doctor.add_argument("--serial-seconds", type=float, default=2.5, help="how long to listen to the receiver")
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

    watch = sub.add_parser("watch", help="dispatch's view: print what the vehicles send")
    _broker_options(watch)
    watch.add_argument("--vehicle", default="+", help="one vehicle id (default all)")
    watch.add_argument("--auto-ack", action="store_true", help="acknowledge every alert (demo)")
    watch.add_argument("--alerts-only", action="store_true")
    watch.set_defaults(func=_watch)

    dispatch = sub.add_parser("dispatch", help="dispatch side: acknowledge or clear an alert")
    dispatch_sub = dispatch.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("ack", "acknowledge an alert"), ("clear", "clear (close) an alert")):
        cmd = dispatch_sub.add_parser(action, help=text)
        cmd.add_argument("vehicle")
        cmd.add_argument("alert_id")
        cmd.add_argument("--operator", default="dispatcher")
        _broker_options(cmd)
        cmd.set_defaults(func=_dispatch_send)
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
