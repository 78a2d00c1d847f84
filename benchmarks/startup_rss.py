"""Start-up time and memory of the running simulated agent.

(a) from process start (``patrol-agent run``) to the first position received
    by a subscriber on the local broker, with a receiver already sending at
    1 Hz (the simulated patrol route); 5 runs, median and max;
(b) RSS (``VmRSS`` of the daemon) during a run of ``--minutes`` (default 10)
    on the simulated route with mock GPIO, sampled every minute.

    .venv/bin/python benchmarks/startup_rss.py [--minutes 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from drivers.gnss.simulate import play
from tests.support.agent_proc import AgentProcess, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")




def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        broker = Mosquitto(base / "broker")
        broker.start()
        device = PtyGnss(base / "gnss")
        stop = threading.Event()
        threading.Thread(target=play, args=(device.write, stop), daemon=True).start()
        startups = []
        try:
            for i in range(args.starts):
                work = base / f"start{i}"
                work.mkdir()
                collector = Collector(broker.port, "patrol/+/position", client_id=f"bench-start-{i}",
                                      persistent=False)
                agent = AgentProcess(work, agent_config(work, broker.port, device.path, log_level="WARNING"))
                began = time.monotonic()
                agent.start(wait=False)
                collector.wait_for(lambda m: len(m) >= 1, timeout=30)
                startups.append(collector.messages[0].at - began)
                agent.kill9()
                collector.close()
            work = base / "long"
            work.mkdir()
            cfg = agent_config(work, broker.port, device.path, log_level="WARNING",
                               reporting__moving_interval_s=10, reporting__stopped_interval_s=120)
            agent = AgentProcess(work, cfg)
            agent.start()
            assert agent.proc is not None
            samples = []
            for minute in range(int(args.minutes)):
                time.sleep(60)
                samples.append((minute + 1, rss_mb(agent.proc.pid)))
                print(f"  after {minute + 1:2d} min: RSS {samples[-1][1]:.1f} MB", flush=True)
            agent.kill9()
        finally:
            stop.set()
            device.close()
            broker.kill()
    print(f"process start -> first position at the broker ({len(startups)} runs, receiver at 1 Hz): "
          f"median {statistics.median(startups):.2f} s, max {max(startups):.2f} s (target <= 2 s)")
    if samples:
        print(f"RSS after {samples[-1][0]} min on the simulated route: {samples[-1][1]:.1f} MB "
              f"(after 1 min: {samples[0][1]:.1f} MB; target <= 60 MB)")


if __name__ == "__main__":
    main()
