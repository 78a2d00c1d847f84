"""``patrol-agent doctor``: is this unit fit for duty? Each check PASS / WARN / FAIL with a hint.

Runs in the CLI process, as the technician fitting the unit. It reads the
config, the receiver (with baud-rate detection), the GPIO chip, and walks to
the broker step by step (DNS, TCP, TLS, MQTT authentication: agent/doctor_link.py)
so that "certificate expired" is told apart from "connection refused". When
the daemon is running it holds the serial port, the GPIO lines and the
vehicle's MQTT session: their state is then asked of the daemon through its
control socket. Another process
holding the port (gpsd, ModemManager) is found in /proc and named.

Long steps report what they do through ``progress`` (the baud-rate scan
takes up to 13 s); each check is handed to ``on_check`` as soon as it is
made, so the technician sees the report grow.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.checks import FAIL, PASS, WARN, Check, Progress, Report, silent
from agent.clock import system_clock_synced
from agent.config import AgentConfig, load
from agent.doctor_hw import check_gnss, check_gpio, check_modes
from agent.doctor_link import check_broker, check_link
from agent.errors import ConfigError

__all__ = ["FAIL", "PASS", "WARN", "Check", "Report", "check_broker", "run"]


# --- config and files -----------------------------------------------------------


def check_files(report: Report, config_path: Path, cfg: AgentConfig) -> None:
    mode = stat.S_IMODE(config_path.stat().st_mode)
    if mode & 0o002:
        report.add("config permissions", FAIL, f"{config_path} is world-writable ({mode:04o})",
                   f"chmod 0640 {config_path}")
    elif mode & 0o004 and cfg.mqtt.password is not None:
        report.add("config permissions", FAIL, f"{config_path} holds a password and is world-readable ({mode:04o})",
                   f"chmod 0640 {config_path}; chown root:patrol-agent {config_path}")
    else:
        report.add("config permissions", PASS, f"{config_path} {mode:04o}")
    check_tls_files(report, cfg)


def check_tls_files(report: Report, cfg: AgentConfig) -> None:
    """The CA, the client certificate and the key, by the same check `run` makes (agent.security)."""
    from agent.security import check_tls

    tls = cfg.mqtt.tls
    found = check_tls(tls, cfg.vehicle.id, clock_synced=system_clock_synced())
    for label, key, fact in (("CA file", "ca_file", "ca"), ("client certificate", "cert_file", "cert"),
                             ("private key", "key_file", "key")):
        path = getattr(tls, key)
        if path is None:
            continue
        items = found.of(f"mqtt.tls.{key}")
        errors = [f for f in items if not f.warning]
        shown = errors or items
        if shown:
            report.add(label, FAIL if errors else WARN, "; ".join(f.message for f in shown),
                       next((f.hint for f in shown if f.hint), ""))
        else:
            report.add(label, PASS, found.facts.get(fact, str(path)))


# --- the rest -----------------------------------------------------------------------


def check_clock(report: Report) -> None:
    synced = system_clock_synced()
    if synced is None:
        report.add("clock", WARN, "cannot ask the kernel", "")
    elif synced:
        report.add("clock", PASS, "synchronised")
    else:
        report.add("clock", WARN, "not synchronised", "no NTP yet: messages use GNSS time once there is a fix")


def check_disk(report: Report, cfg: AgentConfig) -> None:
    path = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        report.add("disk", FAIL, f"{path}: {exc.strerror}")
        return
    free = vfs.f_bavail * vfs.f_frsize
    need = cfg.outbox.max_bytes * 2
    result = PASS if free >= need else (WARN if free >= cfg.outbox.max_bytes // 4 else FAIL)
    detail = f"{free / 1e6:,.0f} MB free for the outbox (bounded at {cfg.outbox.max_bytes / 1e6:,.0f} MB)"
    report.add("disk", result, detail, "" if result == PASS else "free space on the SD card")


def check_service(report: Report, daemon: Callable[[], dict[str, Any] | None]) -> None:
    status = daemon()
    if status is not None:
        report.add("service", PASS, f"running: {status.get('status_line', '')}")
        return
    import shutil
    import subprocess

    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        state = subprocess.run(["systemctl", "is-active", "patrol-agent"], capture_output=True, text=True).stdout
        report.add("service", WARN, f"not answering (systemd says {state.strip() or 'unknown'})",
                   "journalctl -u patrol-agent -e")
    else:
        report.add("service", WARN, "not running", "systemctl start patrol-agent")


def run(config_path: Path, *, serial_seconds: float = 2.5, progress: Progress | None = None,
        on_check: Callable[[Check], None] | None = None, gpio_select: Callable[..., Any] | None = None) -> Report:
    report = Report(on_check=on_check, progress=progress or silent)
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        report.add("config", FAIL, "; ".join(exc.problems), f"patrol-agent config check {config_path}")
        return report
    report.add("config", PASS, f"{config_path}: vehicle {cfg.vehicle.id}")
    check_files(report, config_path, cfg)

    def daemon() -> dict[str, Any] | None:
        from agent.control import request

        try:
            reply = list(request(cfg.runtime_dir, "status", timeout=2))
        except OSError:
            return None
        return reply[-1].get("status") if reply else None

    check_modes(report, cfg)
    check_gnss(report, cfg, daemon, serial_seconds)
    check_gpio(report, cfg, daemon, gpio_select)
    check_link(report, cfg)
    check_clock(report)
    check_disk(report, cfg)
    check_service(report, daemon)
    report.progress("")
    return report
