"""Terminal output for the technicians: the status view, the live monitor, doctor's report.

Runs in the CLI process. Everything is laid out for an 80x24 terminal and
wraps at word boundaries rather than cutting: a path or a command is never
split or shortened with "...", so it can be copied. Colour only on a
terminal (rich decides for the status view; doctor's lines use plain ANSI
and honour NO_COLOR).

``monitor`` shows what cgps shows for the receiver (position, altitude,
speed, course, HDOP, satellites, fix time and age, mode) and the unit's
state (link and broker, MQTT protocol, outbox, emergency, faults, inputs).
It quits on ``q`` or Ctrl-C. Fields the daemon does not report are shown
as ``-``: the view never fails on an older daemon.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import sys
import termios
import textwrap
import time
import tty
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.doctor import FAIL, PASS, WARN, Check, Report

WIDTH = 80


def console(plain: bool = False, width: int | None = None) -> Console:
    return Console(no_color=plain, highlight=False, soft_wrap=False, width=width)


# --- formatting helpers -------------------------------------------------------------------


def _num(value: Any, fmt: str = ".1f", unit: str = "") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:{fmt}}{unit}"


def _clock_time(iso: Any) -> str:
    """``2026-11-30T04:48:40.092516+00:00`` as ``04:48:40Z``: the day is today's on a live view."""
    if not isinstance(iso, str):
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone(UTC).strftime("%H:%M:%SZ")
    except ValueError:
        return iso[:32]


def _age(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60)} s"
    return f"{minutes // 60} h {minutes % 60} min"


def _coord(value: Any, pos: str, neg: str, width: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{abs(value):{width}.6f} {pos if value >= 0 else neg}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# --- the unit's state ------------------------------------------------------------------------


def _gnss_rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    gnss = _dict(status.get("gnss"))
    fix = _dict(gnss.get("fix"))
    mode = fix.get("mode", gnss.get("mode"))
    state = gnss.get("state", "-")
    head = f"{mode}D fix" if mode in (2, 3) else "no fix"
    counters = (f"receiver {state}, {gnss.get('sentences', '-')} sentences, "
                f"{gnss.get('checksum_errors', '-')} checksum errors")
    rows = [("GNSS", f"[bold]{head}[/]   {counters}")]
    speed = fix.get("speed_mps")
    kmh = speed * 3.6 if isinstance(speed, int | float) else None
    rows.append(("", f"lat {_coord(fix.get('lat'), 'N', 'S', 10)}   lon {_coord(fix.get('lon'), 'E', 'W', 11)}   "
                     f"alt {_num(fix.get('alt_msl'), '.1f', ' m')}"))
    rows.append(("", f"speed {_num(fix.get('speed_mps'), '.1f', ' m/s')} ({_num(kmh, '.0f', ' km/h')})   "
                     f"course {_num(fix.get('course_deg'), '.1f', '°')}   HDOP {_num(fix.get('hdop'), '.1f')}   "
                     f"sats used {fix.get('sats_used', gnss.get('sats_used')) or '-'}"))
    age = fix.get("age_s", gnss.get("fix_age_s"))
    rows.append(("", f"fix time {fix.get('fix_time') or '-'}   age {_age(age)}"))
    return rows


def _link_row(status: dict[str, Any]) -> str:
    link = _dict(status.get("link"))
    protocol = link.get("protocol")
    proto = f" over MQTT {protocol}" if protocol else ""
    if link.get("connected"):
        return (f"[green]connected[/]{proto} to {link.get('broker', '-')}, for {_age(link.get('connected_for_s'))}, "
                f"{link.get('reconnects', 0)} reconnects")
    return f"[red]down[/]: {link.get('last_error') or 'connecting'}, {link.get('reconnects', 0)} reconnects"


def _outbox_row(status: dict[str, Any]) -> str:
    box = _dict(status.get("outbox"))
    return (f"{box.get('depth', '-')} waiting, oldest {_age(box.get('oldest_age_s'))}, "
            f"{box.get('in_flight', '-')} in flight, {box.get('alerts', '-')} alerts, "
            f"{box.get('evictions', '-')} evicted")


def _alert_row(status: dict[str, Any]) -> str:
    emergency = status.get("emergency")
    if not emergency:
        return "[green]none[/]"
    if isinstance(emergency, dict):
        return (f"[bold red]EMERGENCY {str(emergency.get('state', '')).upper()}[/] {emergency.get('alert_id')}, "
                f"raised {_clock_time(emergency.get('raised_at'))} ({_age(emergency.get('age_s'))} ago)")
    return f"[bold red]EMERGENCY[/] {emergency}"


def _inputs_row(status: dict[str, Any]) -> str:
    inputs = _dict(status.get("inputs"))
    if not inputs:
        return "[yellow]none configured[/]"
    return "   ".join(f"{name} {'[bold red]ACTIVE[/]' if active else 'idle'}" for name, active in inputs.items())


def _unit_row(status: dict[str, Any]) -> str:
    gpio = _dict(status.get("gpio"))
    factory = gpio.get("factory")
    pins = f", GPIO {factory}{' [red](fallback)[/]' if gpio.get('is_fallback') else ''}" if factory else ""
    lab = ", [yellow]lab mode[/]" if status.get("lab_mode") else ""
    sim = ", [yellow]simulation[/]" if status.get("simulation") else ""
    return f"up {_age(status.get('uptime_s'))}, agent {status.get('agent_version', '-')}{pins}{lab}{sim}"


def render_status(status: dict[str, Any]) -> Group:
    """The unit's state in at most 12 lines of 80 columns."""
    vehicle = _dict(status.get("vehicle"))
    head = Text.from_markup(f"[bold]{vehicle.get('id', '-')}[/] {vehicle.get('unit', '')} "
                            f"({vehicle.get('directorate', '')})")
    faults = status.get("faults") or []
    rows = [
        *_gnss_rows(status),
        ("Link", _link_row(status)),
        ("Outbox", _outbox_row(status)),
        ("Alert", _alert_row(status)),
        ("Inputs", _inputs_row(status)),
        ("Faults", ", ".join(f"[red]{f}[/]" for f in faults) if faults else "[green]none[/]"),
        ("Unit", _unit_row(status)),
    ]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", width=6, no_wrap=True)
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, Text.from_markup(value))
    return Group(head, grid)


# --- monitor --------------------------------------------------------------------------------


@contextlib.contextmanager
def _keys(stream: IO[str]) -> Iterator[Callable[[float], str]]:
    """``wait(seconds)``: a key pressed within that time, or "". Ctrl-C still raises KeyboardInterrupt."""
    if not stream.isatty():
        def sleep(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield sleep
        return
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def wait(seconds: float) -> str:
        ready, _, _ = select.select([fd], [], [], seconds)
        return os.read(fd, 16).decode(errors="replace") if ready else ""

    try:
        yield wait
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def render_frame(state: dict[str, Any] | None, problem: str = "") -> Panel:
    """One frame of the monitor: the state in a box of 80 columns, a problem line above it if any."""
    body: Any = render_status(state) if state is not None else Text("")
    if problem:
        body = Group(Text(problem, style="bold red"), body)
    return Panel(body, title="patrol-agent monitor", title_align="left",
                 subtitle=f"{time.strftime('%H:%M:%S')}  q quits", subtitle_align="right", width=WIDTH)


def monitor(runtime_dir: Path, *, once: bool = False, interval: float = 1.0) -> int:
    """A live view of the unit (as cgps for a receiver); ``once`` prints one frame. q or Ctrl-C quits."""
    from agent.daemon_client import DaemonUnreachable, status

    frame = render_frame

    state = status(runtime_dir)  # not running: DaemonUnreachable, exit 3 (4 without permission)
    out = console()
    if once or not out.is_terminal:
        out.print(frame(state))
        return 0
    try:
        with _keys(sys.stdin) as wait, Live(frame(state), console=out, screen=True, auto_refresh=False) as live:
            while True:
                if wait(interval).lower().startswith("q"):
                    return 0
                try:
                    state, problem = status(runtime_dir, timeout=3), ""
                except DaemonUnreachable as exc:
                    problem = str(exc)
                live.update(frame(state, problem), refresh=True)
    except KeyboardInterrupt:
        return 0


# --- doctor ----------------------------------------------------------------------------------

COLOURS = {PASS: "\033[1;32m", WARN: "\033[1;33m", FAIL: "\033[1;31m"}


def _width(out: IO[str]) -> int:
    if out.isatty():
        return max(40, min(shutil.get_terminal_size((WIDTH, 24)).columns, 120))
    return WIDTH


def _wrap(text: str, width: int, first: str, rest: str) -> list[str]:
    """Word-wrapped lines; a word longer than the line (a path, a URL) is kept whole, never cut."""
    return textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first.rstrip()]


def format_check(check: Check, *, width: int = WIDTH, colour: bool = False) -> list[str]:
    lines = _wrap(f"{check.name}: {check.detail}", width, "      ", "        ")
    tag = f"{COLOURS[check.result]}{check.result}\033[0m" if colour else check.result
    lines[0] = f"{tag}  {lines[0][6:]}"
    if check.hint:
        lines += _wrap(check.hint, width, "      -> ", "         ")
    return lines


def verdict(report: Report) -> str:
    counts = {r: sum(1 for c in report.checks if c.result == r) for r in (PASS, WARN, FAIL)}
    tally = f"{counts[FAIL]} FAIL, {counts[WARN]} WARN, {counts[PASS]} PASS"
    if counts[FAIL]:
        return (f"verdict: FAIL ({tally}): not fit for duty. Fix each FAIL above (its hint follows ->), "
                "then run patrol-agent doctor again.")
    if counts[WARN]:
        return f"verdict: WARN ({tally}): the unit works; read each WARN above before it goes on patrol."
    return f"verdict: PASS ({tally}): fit for duty."


def print_check(check: Check, out: IO[str]) -> None:
    colour = out.isatty() and "NO_COLOR" not in os.environ
    for line in format_check(check, width=_width(out), colour=colour):
        print(line, file=out, flush=True)


def print_doctor(report: Report, out: IO[str], *, checks: bool = True) -> None:
    if checks:
        for check in report.checks:
            print_check(check, out)
    print(file=out)
    for line in _wrap(verdict(report), _width(out), "", "  "):
        print(line, file=out, flush=True)


def progress_printer(err: IO[str]) -> Callable[[str], None]:
    """What doctor is doing now: rewritten in place on a terminal, one line each otherwise."""
    tty_out = err.isatty()

    def show(text: str) -> None:
        if tty_out:
            err.write("\r\033[K" + (f"  ... {text}"[: _width(err) - 1] if text else ""))
        elif text:
            err.write(f"  ... {text}\n")
        err.flush()

    return show
