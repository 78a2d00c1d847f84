"""Terminal output for the technicians: rich tables and a live view; plain text when not on a terminal.

Runs in the CLI process. ``render_*`` functions build rich renderables; the
console decides colour (none when piped), so the same code serves a tty and
a log file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from agent.doctor import Report

STYLE = {"PASS": "bold green", "WARN": "bold yellow", "FAIL": "bold red"}


def console(plain: bool = False) -> Console:
    return Console(no_color=plain, highlight=False, soft_wrap=False)


def render_doctor(report: Report) -> Table:
    table = Table(title="patrol-agent doctor", show_lines=False)
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    table.add_column("hint", style="dim")
    for check in report.checks:
        table.add_row(check.name, f"[{STYLE[check.result]}]{check.result}[/]", check.detail, check.hint)
    return table


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def _kv(title: str, data: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", expand=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in data.items():
        table.add_row(key, _fmt(value))
    return table


def render_status(status: dict[str, Any]) -> Group:
    vehicle = status.get("vehicle", {})
    head = (f"[bold]{vehicle.get('id')}[/] {vehicle.get('unit', '')} ({vehicle.get('directorate', '')})  "
            f"up {_fmt(status.get('uptime_s'))} s  agent {status.get('agent_version')}")
    emergency = status.get("emergency")
    alert = f"[bold red]EMERGENCY {emergency}[/]" if emergency else "[green]no open alert[/]"
    link = status.get("link", {})
    link_line = ("[green]connected[/] to " + str(link.get("broker"))) if link.get("connected") else (
        f"[red]down[/]: {link.get('last_error') or 'connecting'}")
    gnss = status.get("gnss", {})
    outbox = status.get("outbox", {})
    inputs = status.get("inputs", {})
    faults = status.get("faults", [])
    return Group(
        head,
        f"alert: {alert}    link: {link_line}",
        _kv("GNSS", {k: gnss.get(k) for k in ("state", "mode", "fix_age_s", "sats_used", "sentences",
                                              "checksum_errors", "garbage_bytes", "disconnects")}),
        _kv("outbox", outbox),
        _kv("inputs", {k: ("ACTIVE" if v else "idle") for k, v in inputs.items()} or {"(none)": ""}),
        "faults: " + (", ".join(f"[red]{f}[/]" for f in faults) if faults else "[green]none[/]"),
    )


def monitor(runtime_dir: Path, *, once: bool = False, interval: float = 1.0) -> int:
    """A live view of the unit (as cgps does for a receiver); ``once`` renders one frame and returns."""
    from agent.control import request

    def frame() -> Any:
        try:
            reply = list(request(runtime_dir, "status", timeout=3))
        except OSError as exc:
            return Panel(f"[red]cannot reach the daemon[/]: {exc.strerror or exc}", title="patrol-agent monitor")
        return Panel(render_status(reply[-1].get("status", {})), title="patrol-agent monitor",
                     subtitle=time.strftime("%H:%M:%S"))

    out = console()
    if once or not out.is_terminal:
        out.print(frame())
        return 0
    with Live(frame(), console=out, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(frame())
        except KeyboardInterrupt:
            return 0
