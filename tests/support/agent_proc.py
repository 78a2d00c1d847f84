"""The agent as a black box: a real ``patrol-agent run`` process, on a pty receiver and a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from agent.control import request
from tests.support.nmea import sentence
from tests.support.pty_gnss import PtyGnss

ROOT = Path(__file__).resolve().parent.parent.parent


def agent_config(workdir: Path, broker_port: int, gnss_path: Path, **overrides: Any) -> dict[str, Any]:
    """A lab config: plain MQTT to 127.0.0.1, mock GPIO, a position for every fix."""
    cfg: dict[str, Any] = {
        "vehicle": {"id": "PV-TEST-1", "unit": "Test Unit", "directorate": "traffic"},
        "gnss": {"port": str(gnss_path), "reopen_initial_s": 0.1, "reopen_max_s": 0.5},
        "mqtt": {"brokers": [f"mqtt://127.0.0.1:{broker_port}"], "lab_mode": True, "keepalive_s": 5,
                 "backoff_initial_s": 0.2, "backoff_max_s": 1.0, "connect_timeout_s": 3, "ack_timeout_s": 5},
        "reporting": {"moving_interval_s": 0.05, "stopped_interval_s": 0.05, "emergency_interval_s": 0.5},
        "health": {"interval_s": 3600},
        "state_dir": str(workdir / "state"),
        "runtime_dir": str(workdir / "run"),
        "log_level": "INFO",
        "simulation": True,
        "inputs": {"panic_buttons": [{"name": "driver", "pin": 17, "trigger": "press"}],
                   "digital": [{"name": "ignition", "pin": 27, "pull": "down", "kind": "ignition"}]},
        "outputs": {"led": {"pin": 22}},
    }
    for dotted, value in overrides.items():
        node = cfg
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


class AgentProcess:
    def __init__(self, workdir: Path, cfg: dict[str, Any]) -> None:
        self.workdir = workdir
        self.cfg = cfg
        self.config_path = workdir / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.runtime_dir = Path(cfg["runtime_dir"])
        self.log = workdir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, wait: bool = True, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(self.config_path)],
                cwd=ROOT, stdout=log, stderr=log, env={**os.environ, **(env or {})},
            )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if self.ask("status")[-1].get("ok"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"agent not ready: {self.log.read_text()[-3000:]}")

    def ask(self, cmd: str, timeout: float = 10.0, **args: Any) -> list[dict[str, Any]]:
        return list(request(self.runtime_dir, cmd, timeout=timeout, **args))

    def first_reply(self, cmd: str, timeout: float = 5.0, **args: Any) -> dict[str, Any]:
        """The first line the daemon answers (e.g. "accepted" of a test alarm), then hang up."""
        replies = request(self.runtime_dir, cmd, timeout=timeout, **args)
        try:
            return next(iter(replies))
        finally:
            replies.close()  # type: ignore[attr-defined]

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class GnssFeeder:
    """Plays fixes into a pty at ``rate_hz``, each with a unique GNSS time; remembers what it fed."""

    def __init__(self, device: PtyGnss, rate_hz: float = 5.0, start: datetime | None = None) -> None:
        self.device = device
        self.rate = rate_hz
        self.start_time = start or datetime.now(UTC).replace(microsecond=0)
        self.fed: list[tuple[float, str]] = []  # (monotonic when written, ISO fix time)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.lat = 42.6977

    def start(self) -> GnssFeeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        began = time.monotonic()
        i = 0
        while not self._stop.is_set():
            delay = began + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            when = self.start_time + timedelta(seconds=i / self.rate)
            self.device.write(epoch_at(when, self.lat + i * 1e-5))
            self.fed.append((time.monotonic(), iso_ms(when)))
            i += 1


def iso_ms(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def epoch_at(when: datetime, lat: float, lon: float = 23.3219, speed_knots: float = 20.0) -> str:
    hhmmss = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
    ddmmyy = when.strftime("%d%m%y")
    degrees = int(lat)
    lat_text = f"{degrees:02d}{(lat - degrees) * 60:08.5f}"
    lon_degrees = int(lon)
    lon_text = f"{lon_degrees:03d}{(lon - lon_degrees) * 60:08.5f}"
    return (
        sentence(f"GPRMC,{hhmmss},A,{lat_text},N,{lon_text},E,{speed_knots:.1f},90.0,{ddmmyy},,,A")
        + sentence(f"GPGGA,{hhmmss},{lat_text},N,{lon_text},E,1,09,0.9,560.0,M,37.8,M,,")
    )


def positions(messages: Iterator[Any] | list[Any]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith("/position")]
