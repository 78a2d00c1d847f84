"""Bytes the real daemon writes to storage per hour at one position a second, online and offline.

Runs ``patrol-agent run`` (a real process) on the simulated patrol route,
fed at 1 Hz through a pty, with a reporting policy that sends a position
for every fix, against a local mosquitto (online) or a port where nothing
listens (offline: every commit window's telemetry must go to the card),
with the link's default reconnect backoff. It reads the daemon's
``write_bytes`` from ``/proc/<pid>/io``: the kernel's count of the pages
the process dirtied in files (the window log, the databases and their
journals, the boot record), which is what an SD card wears from. As under
systemd, the daemon's log goes to a pipe (journald's side is reported as
the log's own bytes per hour, not counted as the daemon's). Start-up
writes are left out (the first 10 s).

The baseline, measured in the same run: the bytes of the messages the
daemon produced in that time (their JSON), so the ratio is the write
amplification of the outbox. Figures are extrapolated to an hour; the
measurement must span at least one batch into the database (every 10
minutes offline), hence the default of 11 minutes per run.

    .venv/bin/python benchmarks/disk_writes.py [--seconds 660]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.gnss.simulate import play  # noqa: E402
from tests.support.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.support.broker import Mosquitto, free_port  # noqa: E402
from tests.support.mqtt import Collector  # noqa: E402
from tests.support.pty_gnss import PtyGnss  # noqa: E402

WARM_UP_S = 10.0
POSITION_BYTES = 420  # a position report with a 3D fix, as published (measured online when it can be)


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def produced(agent: AgentProcess) -> int:
    """The last seq the daemon gave in this boot: messages produced since it started."""
    return int(agent.ask("status")[-1]["status"]["outbox"]["seq"])


class Daemon:
    """``patrol-agent run`` with its log on a pipe (as journald takes it under systemd)."""

    def __init__(self, agent: AgentProcess) -> None:
        self.agent = agent
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(agent.config_path)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.log_bytes = 0
        threading.Thread(target=self._drain, daemon=True).start()
        agent.proc = self.proc  # so that AgentProcess asks this one (wait_ready, ask, kill9)
        agent.wait_ready()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self.log_bytes += len(chunk)


def measure(workdir: Path, seconds: float, *, online: bool) -> tuple[int, int, float, int]:
    """(bytes written, messages produced, average message size, log bytes) over ``seconds`` after the warm-up."""
    broker = Mosquitto(workdir / "broker")
    port = broker.port if online else free_port()
    if online:
        broker.start()
    device = PtyGnss(workdir / "gnss")
    cfg = agent_config(workdir, port, device.path, reporting__moving_interval_s=0.9,
                       reporting__stopped_interval_s=0.9, health__interval_s=300, log_level="INFO",
                       mqtt__backoff_initial_s=1.0, mqtt__backoff_max_s=60.0)
    cfg["reporting"]["emergency_interval_s"] = 1.0
    agent = AgentProcess(workdir, cfg)
    collector = Collector(broker.port, "patrol/#", client_id="bench-disk") if online else None
    stop = threading.Event()
    try:
        daemon = Daemon(agent)
        pid = daemon.proc.pid
        threading.Thread(target=play, args=(device.write, stop), daemon=True).start()
        time.sleep(WARM_UP_S)  # start-up writes (schema, boot record) are not the steady state
        before, first, logged = write_bytes(pid), produced(agent), daemon.log_bytes
        time.sleep(seconds)
        written, count = write_bytes(pid) - before, produced(agent) - first
        logged = daemon.log_bytes - logged
        sizes = [len(m.payload) for m in collector.messages if m.topic.endswith("/position")] if collector else []
    finally:
        stop.set()
        agent.kill9()
        if collector:
            collector.close()
        broker.kill()
        device.close()
    return written, count, (sum(sizes) / len(sizes)) if sizes else float(POSITION_BYTES), logged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=660.0, help="per run, after a 10 s warm-up (default 660)")
    args = parser.parse_args()
    hour = 3600 / args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        online = measure(Path(tmp) / "online", args.seconds, online=True)
        offline = measure(Path(tmp) / "offline", args.seconds, online=False)
    size = online[2]
    print(f"real daemon, one position a second, {args.seconds:.0f} s per run after a {WARM_UP_S:.0f} s warm-up "
          f"(messages of ~{size:.0f} bytes)")
    for name, (written, count, _, logged), note in (
            ("online ", online, "acknowledged within the commit window: nothing to write"),
            ("offline", offline, "broker unreachable: everything goes to the card (target <= 3 MB/h)")):
        payload = count * size
        ratio = f"{written / payload:4.2f} x the messages' bytes" if payload else "n/a"
        print(f"{name}: {written:11,d} bytes written = {written * hour / 1e6:5.2f} MB/h for {count} messages "
              f"({payload * hour / 1e6:4.2f} MB/h of JSON): {ratio}; {note}; "
              f"log to journald {logged * hour / 1e3:.0f} kB/h")


if __name__ == "__main__":
    main()
