"""`patrol-agent monitor`: what cgps shows plus the unit's state, in 80x24 without cutting; q and Ctrl-C quit."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from agent.tui import render_frame
from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.pty_gnss import PtyGnss

FULL: dict[str, Any] = {
    "vehicle": {"id": "PV-0421", "unit": "Traffic Police Sofia, second shift", "directorate": "traffic"},
    "uptime_s": 7384.2, "agent_version": "0.2.0", "lab_mode": False,
    "gnss": {"state": "fix", "mode": 3, "fix_age_s": 0.4, "sats_used": 11, "sentences": 123456,
             "checksum_errors": 3,
             "fix": {"lat": 42.697712, "lon": -23.321901, "alt_msl": 561.3, "speed_mps": 13.9, "course_deg": 271.5,
                     "hdop": 0.8, "sats_used": 11, "mode": 3, "fix_time": "2026-11-30T10:15:02.000Z",
                     "age_s": 0.4}},
    "link": {"connected": True, "broker": "mqtts://dispatch-broker-02.patrol.example.org:8883", "protocol": "5",
             "reconnects": 4, "connected_for_s": 1234.0, "last_error": None},
    "outbox": {"depth": 12, "oldest_age_s": 3.2, "in_flight": 2, "alerts": 1, "evictions": 0},
    "emergency": {"alert_id": "0f8e2c5a-1b7d-4c39-9a51-3e0d6f7b2a10", "state": "acknowledged",
                  "raised_at": "2026-11-30T10:14:40.120Z", "age_s": 22.0},
    "inputs": {"driver": False, "passenger": True, "ignition": True, "lights": False, "siren": False},
    "faults": ["stuck_input:passenger", "gnss_no_nmea", "session_taken_over", "publish_refused"],
    "gpio": {"factory": "lgpio", "is_fallback": False},
}


def rendered(state: dict[str, Any] | None, problem: str = "") -> list[str]:
    out = io.StringIO()
    Console(file=out, width=80, height=24, no_color=True).print(render_frame(state, problem))
    return out.getvalue().splitlines()


def test_a_full_frame_fits_80x24_and_shows_what_cgps_shows_plus_the_unit() -> None:
    lines = rendered(FULL, "the daemon does not answer on /run/patrol-agent/control.sock (hung?)")
    text = "\n".join(lines)
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), text
    for expected in ("3D fix", "42.697712 N", "23.321901 W", "561.3 m", "13.9 m/s", "50 km/h", "271.5°",
                     "HDOP 0.8", "sats used 11", "2026-11-30T10:15:02.000Z", "age 0.4 s",
                     "connected over MQTT 5 to", "12 waiting, oldest 3.2 s", "EMERGENCY ACKNOWLEDGED", "22.0 s ago",
                     "passenger ACTIVE", "driver idle", "session_taken_over", "GPIO lgpio", "2 h 3 min"):
        assert expected in text, (expected, text)
    # wrapped, never cut: long values come whole, at most split at a space or folded, no ellipsis
    assert "…" not in text and "..." not in text
    flat = text.replace("│", " ").split()
    assert "mqtts://dispatch-broker-02.patrol.example.org:8883," in flat
    assert "0f8e2c5a-1b7d-4c39-9a51-3e0d6f7b2a10," in flat


def test_an_older_daemon_without_the_new_fields_renders_dashes() -> None:
    old = {"vehicle": {"id": "PV-1"}, "gnss": {"state": "no_fix", "mode": 1}, "link": {"connected": False},
           "outbox": {"depth": 0}, "emergency": "a1b2c3", "inputs": {}, "faults": []}
    text = "\n".join(rendered(old))
    assert "no fix" in text and "lat -" in text and "EMERGENCY a1b2c3" in text and "none configured" in text


def read_pty(fd: int, seconds: float) -> bytes:
    got = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("key", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_the_live_view_quits_on_q_and_ctrl_c_without_a_traceback(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, key: bytes) -> None:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "-m", "agent.cli", "monitor", "--runtime-dir",  # noqa: S606
                                  str(agent.runtime_dir), "--interval", "0.3"])
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        shown = read_pty(fd, 3.0)
        os.write(fd, key)
        quit_at = time.monotonic()
        shown += read_pty(fd, 3.0)
        done, status = 0, 0
        while not done and time.monotonic() - quit_at < 5:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        took = time.monotonic() - quit_at
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    finally:
        os.close(fd)
        feeder.stop()
        agent.kill9()
    text = shown.decode(errors="replace")
    assert done, f"monitor did not quit on {key!r}: {text[-1500:]}"
    assert os.waitstatus_to_exitcode(status) == 0
    assert took < 3.5, took
    assert "PV-TEST-1" in text and "Traceback" not in text, text[-1500:]
