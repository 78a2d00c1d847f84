"""CPU of the running daemon's GNSS reader and core threads, fed at 10 Hz through a real pty.

The real daemon (``patrol-agent run``, a separate process, confined under the
``quarter`` budget) reads a pty into which this process plays the simulated
patrol track at 10 epochs per second (RMC, VTG, GGA, GSA and a three-sentence
GSV group per epoch: what a 10 Hz receiver sends at 115200 baud), with the
product's reporting intervals and a real broker. Each thread's CPU time
(user + system) comes from ``/proc/<pid>/task/<tid>/stat``, found by the
kernel name the daemon gives its threads (``gnss-reader``; the core loop is
the main thread, tid == pid), taken after a warm-up and again at the end, and
divided by the wall time between. The target is 10% of the quarter-core
budget, i.e. 2.5% of one core for reader and core together. For scale, the
same run measures bare ``pynmea2.parse`` of the same sentences in this
process (the baseline) and reports the daemon's other threads.

    .venv/bin/python benchmarks/gnss_reader_cpu.py [--seconds 60] [--rate 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pynmea2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import budget  # noqa: E402
from benchmarks.installed import compile_bytecode  # noqa: E402
from drivers.gnss.simulate import track  # noqa: E402
from tests.support.agent_proc import AgentProcess, agent_config  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.nmea import sentence  # noqa: E402
from tests.support.pty_gnss import PtyGnss  # noqa: E402

GSV = "".join(sentence(body) for body in (
    "GPGSV,3,1,11,08,75,303,44,07,66,172,51,11,51,055,36,28,39,325,36",
    "GPGSV,3,2,11,17,31,254,51,26,13,295,51,09,12,322,36,19,12,046,51",
    "GPGSV,3,3,11,20,09,138,36,13,04,183,51,32,03,113,44,,,,",
))
TICKS = os.sysconf("SC_CLK_TCK")
TARGET_PCT = 0.10 * 100 * budget.QUOTA_US / budget.PERIOD_US  # 10% of a quarter core, in % of one core


def threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of each thread of ``pid``, by kernel name; the main thread is ``core``."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # a thread that just ended
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        key = "core" if task.name == str(pid) else name
        out[key] = out.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return out


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds fed before the measurement starts")
    args = parser.parse_args()
    compile_bytecode()  # as installed: no module compiled from source at start
    epochs = [text + GSV for _, text in track(laps=10, rate_hz=args.rate)]
    count = int(args.seconds * args.rate)
    warm = int(args.warmup * args.rate)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        broker = Mosquitto(base / "broker")
        broker.start()
        device = PtyGnss(base / "gnss")
        work = base / "agent"
        work.mkdir()
        cfg = agent_config(work, broker.port, device.path, log_level="WARNING")
        cfg["gnss"]["baudrate"] = 115200
        cfg["reporting"] = {}  # the product's intervals: a position every 10 s moving, 120 s stopped
        cfg["health"] = {}
        agent = AgentProcess(work, cfg)
        try:
            agent.start(wait=False)
            assert agent.proc is not None
            pid = agent.proc.pid
            budget.confine(pid)
            agent.wait_ready(timeout=60)
            began = time.monotonic()
            before: dict[str, float] = {}
            cpu_before = 0.0
            measured_from = 0.0
            for i in range(warm + count):
                if i == warm:
                    before, cpu_before, measured_from = threads_cpu(pid), process_cpu(pid), time.monotonic()
                delay = began + i / args.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                device.write(epochs[i % len(epochs)])
            time.sleep(0.3)
            after, cpu_after, wall = threads_cpu(pid), process_cpu(pid), time.monotonic() - measured_from
            counters = agent.ask("status")[-1].get("status", {}).get("gnss", {})
            if not agent.running:
                raise SystemExit(f"the daemon died: {agent.log.read_text()[-2000:]}")
        finally:
            agent.kill9()
            device.close()
            broker.kill()
    used = {name: after[name] - before.get(name, 0.0) for name in after}
    reader = used.get("gnss-reader", 0.0)
    core = used.get("core", 0.0)
    total = cpu_after - cpu_before
    lines = [line for text in epochs[:count] for line in text.split("\r\n") if line]
    began_cpu = time.process_time()
    for line in lines:
        pynmea2.parse(line, check=True)
    bare = (time.process_time() - began_cpu) * (count / max(1, len(epochs[:count])))
    pct = 100 * (reader + core) / wall
    bare_pct = 100 * bare / wall
    print(f"fed {count} epochs at {args.rate:g} Hz for {wall:.1f} s after {args.warmup:g} s of warm-up "
          f"({len(epochs[0])} bytes/epoch); budget {budget.name()}")
    print(f"daemon's gnss counters: {counters}")
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        print(f"  thread {name:16s} {seconds:7.3f} s CPU = {100 * seconds / wall:5.2f}% of one core")
    print(f"reader + core: {reader + core:.3f} s = {pct:.2f}% of one core (target <= {TARGET_PCT:g}%: 10% of the "
          f"quarter-core budget); whole daemon {100 * total / wall:.2f}%")
    print(f"per epoch: reader {1e6 * reader / count:.0f} us, core {1e6 * core / count:.0f} us; "
          f"bare pynmea2.parse of the same sentences: {1e6 * bare / count:.0f} us per epoch")
    ticks_note = f"/proc ticks are {1000 / TICKS:g} ms"
    budget.report("GNSS 10 Hz: reader + core threads CPU", pct, "% of one core", target=f"<= {TARGET_PCT:g}",
                  baseline=bare_pct, baseline_is="bare pynmea2.parse",
                  note=f"reader {100 * reader / wall:.2f}%, core {100 * core / wall:.2f}%, "
                       f"whole daemon {100 * total / wall:.2f}%; {ticks_note}")
    budget.report("GNSS 10 Hz: reader thread CPU", 100 * reader / wall, "% of one core",
                  baseline=bare_pct, baseline_is="bare pynmea2.parse")
    budget.report("GNSS 10 Hz: core thread CPU", 100 * core / wall, "% of one core")


if __name__ == "__main__":
    main()
