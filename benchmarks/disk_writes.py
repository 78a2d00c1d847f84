"""Bytes the running agent writes to storage per hour at one position per second.

Runs the real daemon (``patrol-agent run``) on the simulated patrol route at
1 Hz with a reporting policy that sends a position for every fix, against a
local mosquitto, and reads the daemon's ``write_bytes`` from
``/proc/<pid>/io`` (the kernel's count of what the process sent to the
storage layer: the SQLite database, its WAL and the sequence file). The same
run is repeated with the broker unreachable, where every window's telemetry
must be committed, for comparison. Figures are extrapolated to an hour.

    .venv/bin/python benchmarks/disk_writes.py [--seconds 120]
"""

from __future__ import annotations

import argparse
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


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def measure(workdir: Path, seconds: float, *, online: bool) -> tuple[int, int]:
    broker = Mosquitto(workdir / "broker")
    port = broker.port if online else free_port()
    if online:
        broker.start()
    device = PtyGnss(workdir / "gnss")
    cfg = agent_config(workdir, port, device.path, reporting__moving_interval_s=0.9,
                       reporting__stopped_interval_s=0.9, health__interval_s=300, log_level="WARNING")
    cfg["reporting"]["emergency_interval_s"] = 1.0
    agent = AgentProcess(workdir, cfg)
    collector = Collector(broker.port, "patrol/#", client_id="bench-disk") if online else None
    stop = threading.Event()

    try:
        agent.start()
        assert agent.proc is not None
        threading.Thread(target=play, args=(device.write, stop), daemon=True).start()
        time.sleep(5)  # start-up writes (schema, first sequence block) are not the steady state
        before = write_bytes(agent.proc.pid)
        time.sleep(seconds)
        written = write_bytes(agent.proc.pid) - before
        positions = len([m for m in collector.messages if m.topic.endswith("/position")]) if collector else 0
    finally:
        stop.set()
        agent.kill9()
        if collector:
            collector.close()
        broker.kill()
        device.close()
    return written, positions


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120.0)
    args = parser.parse_args()
    hour = 3600 / args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        online, positions = measure(Path(tmp) / "online", args.seconds, online=True)
        offline, _ = measure(Path(tmp) / "offline", args.seconds, online=False)
    print(f"one position per second for {args.seconds:.0f} s ({positions} received by the broker in the online run)")
    print(f"online:  {online:10,d} bytes written = {online * hour / 1e6:7.2f} MB/h (target <= 10 MB/h)")
    print(f"offline: {offline:10,d} bytes written = {offline * hour / 1e6:7.2f} MB/h "
          "(every commit window's telemetry goes to the card)")


if __name__ == "__main__":
    main()
