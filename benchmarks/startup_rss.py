"""Start-up time and resident memory of the real daemon, under both CPU budgets.

(a) from process start (``patrol-agent run``, a separate process, confined
    under the ``quarter`` budget as soon as it exists) to the first message
    of the daemon at a subscriber on the local broker (``--starts`` runs, each
    with a fresh state directory; median and max), and, for reference, to the
    first position (bounded by the receiver's next epoch at 1 Hz);
(b) RSS (``VmRSS``) of the daemon on the simulated route with mock GPIO and
    the product's reporting intervals, sampled every minute for ``--minutes``
    (default 10); at the end, where the resident memory is (anonymous, file
    pages) from ``/proc/<pid>/smaps_rollup``.

The daemon runs as installed, its bytecode compiled ahead (see
``benchmarks/installed.py``).

    .venv/bin/python benchmarks/startup_rss.py [--minutes 10] [--starts 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import budget
from benchmarks.installed import compile_bytecode
from drivers.gnss.simulate import play
from tests.support.agent_proc import AgentProcess, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

# what the daemon's imports cost in resident memory, in the order ``patrol-agent run`` meets them
IMPORTS = ["json", "logging", "dataclasses", "sqlite3", "ssl", "pydantic", "pydantic.main", "yaml", "agent.config",
           "agent.config_load", "agent.security", "serial", "pynmea2", "drivers.gnss.reader", "paho.mqtt.client",
           "gpiozero", "gpiozero.pins.mock", "agent.messages", "agent.outbox", "agent.alerts", "agent.app"]
IMPORT_COST = """
import importlib, sys
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
print(f"interpreter {kb('VmRSS')} {kb('RssAnon')}")
for name in sys.argv[1:]:
    importlib.import_module(name)
    print(f"{name} {kb('VmRSS')} {kb('RssAnon')}")
"""
START_TARGET_S = 0.5
RSS_TARGET_MB = 40.0


def status_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def import_costs() -> list[str]:
    """RSS after each of the daemon's imports, in a fresh interpreter (cumulative; each adds what it pulls in)."""
    done = subprocess.run([sys.executable, "-c", IMPORT_COST, *IMPORTS], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    lines, previous = [], 0
    for line in done.stdout.splitlines():
        name, rss, anon = line.split()
        lines.append(f"{name:22s} RSS {int(rss) / 1024:5.1f} MB (+{(int(rss) - previous) / 1024:4.1f}), "
                     f"anonymous {int(anon) / 1024:5.1f} MB")
        previous = int(rss)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--starts", type=int, default=7)
    parser.add_argument("--from-source", action="store_true",
                        help="for comparison: leave the bytecode as it is (with PYTHONDONTWRITEBYTECODE=1 and no "
                             "__pycache__, every start compiles the agent from source)")
    args = parser.parse_args()
    if not args.from_source:
        compile_bytecode()  # as installed: no module compiled from source at start
    first: list[float] = []
    first_position: list[float] = []
    samples: list[tuple[int, dict[str, int]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        broker = Mosquitto(base / "broker")
        broker.start()
        device = PtyGnss(base / "gnss")
        stop = threading.Event()
        threading.Thread(target=play, args=(device.write, stop), daemon=True).start()
        try:
            for i in range(args.starts):
                work = base / f"start{i}"
                work.mkdir()
                vehicle = f"PV-START-{i}"  # a topic of its own: no retained message from the previous start
                collector = Collector(broker.port, f"patrol/{vehicle}/#", client_id=f"bench-start-{i}",
                                      persistent=False)
                agent = AgentProcess(work, agent_config(work, broker.port, device.path, log_level="WARNING",
                                                        vehicle__id=vehicle))
                began = time.monotonic()
                agent.start(wait=False)
                assert agent.proc is not None
                budget.confine(agent.proc.pid)
                collector.wait_for(lambda m: any(r.topic.endswith("/position") for r in m), timeout=60)
                first.append(collector.messages[0].at - began)
                first_position.append(next(r.at for r in collector.messages if r.topic.endswith("/position"))
                                      - began)
                print(f"  start {i + 1}: first message {first[-1]:.3f} s ({collector.messages[0].topic}), "
                      f"first position {first_position[-1]:.3f} s", flush=True)
                agent.kill9()
                collector.close()
            work = base / "long"
            work.mkdir()
            cfg = agent_config(work, broker.port, device.path, log_level="WARNING")
            cfg["reporting"] = {}  # the product's intervals
            cfg["health"] = {}
            agent = AgentProcess(work, cfg)
            agent.start(wait=False)
            assert agent.proc is not None
            pid = agent.proc.pid
            budget.confine(pid)
            agent.wait_ready(timeout=60)
            for minute in range(max(1, round(args.minutes))):
                time.sleep(60 if args.minutes >= 1 else 60 * args.minutes)
                samples.append((minute + 1, status_kb(pid)))
                print(f"  after {minute + 1:2d} min: RSS {samples[-1][1]['VmRSS'] / 1024:.1f} MB", flush=True)
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            if not agent.running:
                raise SystemExit(f"the daemon died: {agent.log.read_text()[-2000:]}")
            agent.kill9()
        finally:
            stop.set()
            device.close()
            broker.kill()
    print(f"process start -> first message at the broker ({len(first)} runs, budget {budget.name()}): "
          f"median {statistics.median(first):.3f} s, max {max(first):.3f} s (target <= {START_TARGET_S} s)")
    print(f"process start -> first position (receiver at 1 Hz): median {statistics.median(first_position):.3f} s, "
          f"max {max(first_position):.3f} s")
    last = samples[-1][1]
    print(f"RSS after {samples[-1][0]} min on the simulated route: {last['VmRSS'] / 1024:.1f} MB "
          f"(anonymous {last['RssAnon'] / 1024:.1f} MB, file pages {last['RssFile'] / 1024:.1f} MB; "
          f"peak {last['VmHWM'] / 1024:.1f} MB; after 1 min: {samples[0][1]['VmRSS'] / 1024:.1f} MB; "
          f"target <= {RSS_TARGET_MB:g} MB)")
    print("smaps_rollup at the end:\n  " + "\n  ".join(
        line for line in rollup.splitlines()[1:] if line.split(":")[0] in
        ("Rss", "Pss", "Shared_Clean", "Private_Clean", "Private_Dirty", "Anonymous")))
    print("what the imports hold (a fresh interpreter importing, in order, what the daemon imports):\n  "
          + "\n  ".join(import_costs()))
    budget.report("start -> first message at the broker, median", statistics.median(first), "s",
                  target=f"<= {START_TARGET_S}", note=f"{len(first)} starts")
    budget.report("start -> first message at the broker, max", max(first), "s",
                  target=f"<= {START_TARGET_S}", note=f"{len(first)} starts")
    budget.report("start -> first position (receiver at 1 Hz), median", statistics.median(first_position), "s")
    budget.report(f"RSS after {samples[-1][0]} min", last["VmRSS"] / 1024, "MB", target=f"<= {RSS_TARGET_MB:g}",
                  note=f"anonymous {last['RssAnon'] / 1024:.1f} MB, file {last['RssFile'] / 1024:.1f} MB")


if __name__ == "__main__":
    main()
