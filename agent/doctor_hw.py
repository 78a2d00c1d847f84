"""doctor's hardware checks: the GNSS receiver (baud-rate scan, a port held by another process) and GPIO.

Runs in the CLI process, under ``patrol-agent doctor`` (see agent/doctor.py).
The receiver is read at its configured rate, then at every other rate with
progress reported; a port held by gpsd, ModemManager or anything else is
found in /proc/*/fd and the holder named. GPIO: the pin factory the daemon
would choose (drivers.gpio.select_factory) and each configured input opened
through it and read. When the running agent holds the port or the pins,
their state is asked of it instead.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.checks import FAIL, PASS, WARN, Report
from agent.config import BAUD_RATES, AgentConfig
from drivers.gnss import NmeaDecoder

# --- the receiver ---------------------------------------------------------------


def probe_serial(port: str, baudrate: int, seconds: float) -> tuple[int, int, Any]:
    """(bytes read, valid sentences, the last fix) at one baud rate."""
    import serial

    decoder = NmeaDecoder()
    got = 0
    last = None
    with serial.serial_for_url(port, baudrate=baudrate, timeout=0, exclusive=True) as ser:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([ser.fileno()], [], [], 0.1)
            if ready:
                data = ser.read(ser.in_waiting or 1)
                got += len(data)
                for fix in decoder.feed(data):
                    last = fix
                if decoder.counters.sentences >= 10 and last is not None:
                    break
        for fix in decoder.flush():
            last = fix
    return got, decoder.counters.sentences, last


HOLDER_HINTS = {
    "gpsd": "sudo systemctl disable --now gpsd.socket gpsd (the agent reads the receiver itself)",
    "ModemManager": "sudo systemctl disable --now ModemManager (it probes serial ports)",
}


def _is_agent(cmdline: list[str]) -> bool:
    return "run" in cmdline and any(arg.endswith("patrol-agent") or arg == "agent.cli" for arg in cmdline)


def _pty_index(port: str) -> str | None:
    real = os.path.realpath(port)
    return real.rsplit("/", 1)[1] if real.startswith("/dev/pts/") else None


def _holds_pty_master(pid: str, fd: os.DirEntry[str], index: str) -> bool:
    """This fd is the master of pty ``index``: its holder *is* the (simulated) receiver, not a competitor."""
    try:
        if os.readlink(fd.path) not in ("/dev/ptmx", "/dev/pts/ptmx"):
            return False
        info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
    except OSError:
        return False
    return f"tty-index:\t{index}\n" in info + "\n"


def port_holders(port: str, *, exclude: set[int] | None = None) -> tuple[list[tuple[int, str, bool]], bool]:
    """Processes that have ``port`` open, as (pid, name, is the agent), and whether some could not be seen.

    A process that also holds the master side of the same pty is the receiver itself (``patrol-agent sim
    gnss``, a test's fake receiver) and is not counted.
    """
    exclude = {os.getpid()} if exclude is None else exclude
    try:
        target = os.stat(port)
    except OSError:
        return [], False
    index = _pty_index(port)
    found: list[tuple[int, str, bool]] = []
    hidden = False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            fds = list(os.scandir(f"/proc/{entry.name}/fd"))
        except PermissionError:
            hidden = True
            continue
        except OSError:
            continue
        if index is not None and any(_holds_pty_master(entry.name, fd, index) for fd in fds):
            continue
        for fd in fds:
            try:
                info = os.stat(fd.path)
            except OSError:
                continue
            if (info.st_rdev, info.st_ino, info.st_dev) == (target.st_rdev, target.st_ino, target.st_dev):
                try:
                    name = Path(f"/proc/{entry.name}/comm").read_text().strip()
                    cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes().decode(errors="replace").split("\0")
                except OSError:
                    name, cmdline = "?", []
                found.append((int(entry.name), name, _is_agent(cmdline)))
                break
    return found, hidden


def _report_from_daemon(report: Report, status: dict[str, Any]) -> None:
    gnss = status.get("gnss", {})
    state = gnss.get("state")
    # talking NMEA: fix, no fix, or still waiting for the receiver's first time (a cold start)
    result = PASS if state in ("fix", "no_fix", "opening") else WARN if state == "waiting_for_time" else FAIL
    hint = ("the receiver repeats one old epoch, its time does not advance: power-cycle it; if it persists, "
            "its firmware or its serial adapter is at fault") if state == "time_frozen" else ""
    report.add("GNSS device", result, f"in use by the running agent: {gnss.get('state')}, "
               f"{gnss.get('sentences')} sentences", hint)
    report.add("GNSS fix", PASS if gnss.get("state") == "fix" else WARN,
               f"mode {gnss.get('mode')}, {gnss.get('sats_used')} satellites (from the agent)")


def check_gnss(report: Report, cfg: AgentConfig, daemon: Callable[[], dict[str, Any] | None],
               seconds: float = 2.5) -> None:
    port = cfg.gnss.port
    if "://" not in port and not os.path.exists(port):
        report.add("GNSS device", FAIL, f"{port} does not exist",
                   "receiver unplugged or not powered? check the cable, ls /dev/serial/by-id/, gnss.port")
        return
    holders, hidden = port_holders(port) if "://" not in port else ([], False)
    others = [h for h in holders if not h[2]]
    if holders and not others:  # only the running agent: ask it rather than wait for a port it holds
        status = daemon()
        if status is not None:
            _report_from_daemon(report, status)
            return
    if others:
        pid, name, _ = others[0]
        status = daemon() if len(others) < len(holders) else None
        if status is not None:
            _report_from_daemon(report, status)
        report.add("GNSS device", FAIL, f"{port} is busy: held by {name} (pid {pid})",
                   HOLDER_HINTS.get(name, f"stop {name} (pid {pid}), or set gnss.port to the receiver's port"))
        return
    report.progress(f"listening to {port} at {cfg.gnss.baudrate} baud ({seconds:g} s)")
    try:
        got, sentences, fix = probe_serial(port, cfg.gnss.baudrate, seconds)
    except Exception as exc:  # serial raises several kinds
        status = daemon()  # the running agent holds the port (exclusively): ask it instead
        if status is not None:
            _report_from_daemon(report, status)
            return
        if isinstance(exc, PermissionError) or "ermission denied" in str(exc):
            report.add("GNSS device", FAIL, f"cannot open {port}: permission denied",
                       "run doctor as root, or as a member of the dialout group (the service user is)")
        elif hidden and ("lock" in str(exc) or "busy" in str(exc).lower()):
            report.add("GNSS device", FAIL, f"{port} is busy, held by a process this user cannot see",
                       "run doctor as root to name it")
        else:
            report.add("GNSS device", FAIL, f"cannot open {port}: {exc}", "check gnss.port")
        return
    if sentences:
        report.add("GNSS device", PASS, f"NMEA flowing at {cfg.gnss.baudrate} baud ({sentences} sentences)")
        report_fix(report, fix)
        return
    found = None
    others_rates = [r for r in BAUD_RATES if r != cfg.gnss.baudrate]
    for index, rate in enumerate(others_rates, 1):
        report.progress(f"no NMEA at {cfg.gnss.baudrate} baud; trying {rate} baud ({index}/{len(others_rates)})")
        _, rate_sentences, rate_fix = probe_serial(port, rate, 1.5)
        if rate_sentences:
            found = (rate, rate_fix)
            break
    if found is not None:
        report.add("GNSS device", FAIL, f"no NMEA at {cfg.gnss.baudrate} baud; found NMEA at {found[0]} baud",
                   f"set gnss.baudrate: {found[0]}")
        report_fix(report, found[1])
    elif got:
        report.add("GNSS device", FAIL, f"{got} bytes but no NMEA at any baud rate",
                   "a receiver speaking a binary protocol (UBX?) or a broken line")
    else:
        report.add("GNSS device", FAIL, f"no data from {port} in {seconds:g} s",
                   "receiver off, or TX not wired to the unit's RX")


def report_fix(report: Report, fix: Any) -> None:
    if fix is not None and fix.has_position:
        report.add("GNSS fix", PASS, f"{fix.mode}D fix, {fix.sats_used or '?'} satellites, HDOP {fix.hdop}")
    else:
        report.add("GNSS fix", WARN, "no fix yet", "under open sky a cold start takes up to a minute")


# --- GPIO -----------------------------------------------------------------------


def check_modes(report: Report, cfg: AgentConfig) -> None:
    if cfg.simulation:
        report.add("simulation", WARN, "on: GPIO on mock pins, the real panic buttons are OFF",
                   "set simulation: false in a vehicle")
    if cfg.mqtt.lab_mode:
        report.add("lab mode", WARN, "on (mqtt.lab_mode: true): plain TCP and missing TLS files are allowed",
                   "set mqtt.lab_mode: false in a vehicle")


def check_gpio(report: Report, cfg: AgentConfig, daemon: Callable[[], dict[str, Any] | None],
               select: Callable[..., Any] | None = None) -> None:
    from drivers.gpio import read_level, select_factory

    buttons = cfg.inputs.panic_buttons
    if not buttons:
        report.add("panic buttons", WARN, "none configured (inputs.panic_buttons is empty): the officers have no "
                   "alarm button", "add one under inputs.panic_buttons, e.g. {name: driver, pin: 17}")
    report.progress(f"opening the GPIO pin factory ({cfg.gpio.pin_factory})")
    choice = (select or select_factory)(cfg.gpio.pin_factory, simulation=cfg.simulation)
    inputs = [*buttons, *cfg.inputs.digital]
    hint = ("on a Raspberry Pi: gpio.pin_factory: lgpio, with lgpio installed in /opt/patrol-agent/venv "
            "(see README: GPIO); the user needs the gpio group")
    if not choice.usable:
        report.add("GPIO pin factory", FAIL if inputs else WARN,
                   f"no pin factory ({cfg.gpio.pin_factory}): " + "; ".join(choice.problems), hint)
        return
    try:
        if choice.is_fallback:
            report.add("GPIO pin factory", FAIL if buttons else WARN,
                       f"{choice.name}, a fallback: " + "; ".join(choice.problems), hint)
        else:
            report.add("GPIO pin factory", PASS, f"{choice.name}" + (" (simulation)" if cfg.simulation else ""))
        held: dict[str, Any] | None = None
        for item in inputs:
            label = f"input {item.name} (pin {item.pin})"
            try:
                active = read_level(item, choice.factory)
            except Exception as exc:  # gpiozero raises many kinds: pin in use, no permission, bad pin
                held = held if held is not None else (daemon() or {})
                if item.name in held.get("inputs", {}):
                    state = "ACTIVE" if held["inputs"][item.name] else "idle"
                    report.add(label, PASS, f"held by the running agent, which reads it {state}")
                else:
                    report.add(label, FAIL, f"cannot open it: {exc}",
                               "check the pin number; is another program using it?")
                continue
            if active and item in buttons:
                report.add(label, WARN, "reads ACTIVE with nobody pressing it: stuck, or pull/active wrong",
                           "check the wiring and the button's pull and active keys")
            else:
                report.add(label, PASS, f"opened, reads {'ACTIVE' if active else 'idle'}")
    finally:
        if choice.factory is not None:
            choice.factory.close()
