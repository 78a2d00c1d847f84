"""The ``patrol-agent`` command line: the daemon and the technicians' tools.

Runs in the CLI process. Each subcommand imports what it needs when it runs,
so that ``patrol-agent config check`` starts fast on a Pi.
Exit codes, the same for every command (and listed in ``--help``): see
:data:`EXIT_CODES`. Ordinary errors print one line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from agent import __version__
from agent import cli_commands as run_command
from agent.cli_commands import DEFAULT_CONFIG, EXIT_CODES, OK

BUTTON_HELP = (
    "a panic button, NAME:PIN[:OPTION,...] (repeatable). NAME: lower-case letters, digits, _; PIN: the BCM GPIO "
    "number. OPTIONS: press (alarm at once) or hold (the default: held 1 s, against accidental presses), "
    "hold=SECONDS; active_low (the default: a button to ground, internal pull-up) or active_high (a button to "
    "3.3 V, internal pull-down); pull=none with active_low/active_high for an external resistor; debounce=MS "
    "(default 30). Example: --panic-button driver:17 --panic-button passenger:27:press,active_high"
)


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
    run.set_defaults(func=run_command.run)

    config = sub.add_parser("config", help="check or show a config file")
    config_sub = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = config_sub.add_parser(
        "check", help="apply the daemon's start-up checks (schema, TLS files, certificate, key): exit 0 if "
                      "`run` would start, 2 with every problem and its line otherwise")
    check.add_argument("file", help="the config file (e.g. /etc/patrol-agent/agent.yaml)")
    check.set_defaults(func=run_command.config_check)
    show = config_sub.add_parser("show", help="print the effective config (defaults filled in, secrets redacted)")
    show.add_argument("file", help="the config file")
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=run_command.config_show)

    gnss = sub.add_parser("gnss", help="GNSS receiver tools")
    gnss_sub = gnss.add_subparsers(dest="action", required=True, metavar="ACTION")
    decode = gnss_sub.add_parser("decode", help="decode a raw NMEA capture: one JSON object per epoch")
    decode.add_argument("file", nargs="?", default="-", help="capture file, or - for standard input (default)")
    decode.add_argument("--date", type=run_command.iso_date, help="date for streams that carry none (YYYY-MM-DD)")
    decode.add_argument("--summary", action="store_true", help="print the counters on standard error")
    decode.set_defaults(func=run_command.gnss_decode)

    sim = sub.add_parser("sim", help="simulated hardware for demos and tests")
    sim_sub = sim.add_subparsers(dest="action", required=True, metavar="ACTION")
    sim_gnss = sim_sub.add_parser("gnss", help="replay a patrol route through a pty at its real rate")
    sim_gnss.add_argument("--link", required=True, help="path of the symlink to create to the pty device")
    sim_gnss.add_argument("--rate", type=float, default=1.0, help="epochs per second (default 1)")
    sim_gnss.add_argument("--laps", type=int, default=1000, help="laps of the route (default 1000)")
    sim_gnss.set_defaults(func=run_command.sim_gnss)
    press = sim_sub.add_parser("press", help="press a simulated input of the running daemon")
    press.add_argument("name", help="the input's name in the config (inputs.panic_buttons / digital)")
    press.add_argument("--hold", type=float, help="release after this many seconds")
    run_command.daemon_options(press)
    press.set_defaults(func=run_command.sim_press)
    release = sim_sub.add_parser("release", help="release a simulated input of the running daemon")
    release.add_argument("name", help="the input's name in the config (inputs.panic_buttons / digital)")
    run_command.daemon_options(release)
    release.set_defaults(func=run_command.sim_release)

    panic = sub.add_parser("panic", help="panic alarm tools")
    panic_sub = panic.add_subparsers(dest="action", required=True, metavar="ACTION")
    test = panic_sub.add_parser("test", help="send a test alarm through the whole path and show each stage")
    test.add_argument("--timeout", type=float, default=60.0,
                      help="seconds to wait for dispatch's acknowledgement before giving up (default 60)")
    run_command.daemon_options(test)
    test.set_defaults(func=run_command.panic_test)

    status = sub.add_parser("status", help="the running daemon's state")
    run_command.daemon_options(status)
    status.add_argument("--json", action="store_true", help="the daemon's state as JSON (for scripts)")
    status.set_defaults(func=run_command.status)

    monitor = sub.add_parser("monitor", help="a live view of the unit (fix, link, outbox, inputs, alerts)")
    run_command.daemon_options(monitor)
    monitor.add_argument("--once", action="store_true", help="print one frame and exit")
    monitor.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (default 1)")
    monitor.set_defaults(func=run_command.monitor)

    doctor = sub.add_parser("doctor", help="check the unit: config, receiver, GPIO, broker, clock, disk, service")
    doctor.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    doctor.add_argument("--json", action="store_true", help="the checks as JSON (for scripts)")
    doctor.add_argument("--serial-seconds", type=float, default=2.5,
                        help="how long to listen to the receiver at its configured rate (default 2.5)")
    doctor.set_defaults(func=run_command.doctor)

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
                           type=run_command.panic_button, help=BUTTON_HELP)
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
    provision.set_defaults(func=run_command.provision)

    watch = sub.add_parser("watch", help="dispatch's view: print what the vehicles send", allow_abbrev=False)
    run_command.broker_options(watch)
    watch.add_argument("--vehicle", default="+", help="one vehicle id (default all)")
    watch.add_argument("--auto-ack", action="store_true", help="acknowledge every alert (demo)")
    watch.add_argument("--alerts-only", action="store_true", help="print alerts only")
    watch.add_argument("--capture", metavar="FILE", help="also append every message to FILE as a JSON line "
                                                         "(for `dispatch audit`)")
    watch.set_defaults(func=run_command.watch)

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
        run_command.broker_options(cmd)
        cmd.set_defaults(func=run_command.dispatch_send)
    audit = dispatch_sub.add_parser("audit", allow_abbrev=False,
                                    help="per vehicle and boot, the messages missing or twice in a capture (exit 1 "
                                         "if any is missing)")
    audit.add_argument("capture", help="JSON lines of received messages (watch --capture FILE, or mosquitto_sub "
                                       "-F %%J)")
    audit.add_argument("--json", action="store_true", help="the report as JSON")
    audit.set_defaults(func=run_command.dispatch_audit)
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
