"""CPU share of the running GNSS reader fed at 10 Hz through a real pty.

A child process runs only the agent's GnssReader on a pty; this process plays
the simulated patrol track into it at 10 epochs per second (RMC, VTG, GGA,
GSA and a three-sentence GSV group per epoch: what a 10 Hz receiver sends at
115200 baud). The child's own CPU time (user + system, from the kernel) over
the run is divided by the wall time. For scale, the same run reports how
much CPU bare ``pynmea2.parse`` needs for the same sentences in this process.

    .venv/bin/python benchmarks/gnss_reader_cpu.py [--seconds 60] [--rate 10]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pynmea2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.gnss.simulate import track  # noqa: E402
from tests.support.nmea import sentence  # noqa: E402
from tests.support.pty_gnss import PtyGnss  # noqa: E402

GSV = "".join(sentence(body) for body in (
    "GPGSV,3,1,11,08,75,303,44,07,66,172,51,11,51,055,36,28,39,325,36",
    "GPGSV,3,2,11,17,31,254,51,26,13,295,51,09,12,322,36,19,12,046,51",
    "GPGSV,3,3,11,20,09,138,36,13,04,183,51,32,03,113,44,,,,",
))

CHILD = """
import sys, time, threading
sys.path.insert(0, {root!r})
from agent.config import GnssConfig
from drivers.gnss.reader import GnssReader
fixes = 0
def on_fix(fix):
    global fixes
    fixes += 1
reader = GnssReader(GnssConfig(port={port!r}, baudrate=115200), on_fix=on_fix)
reader.start()
print("ready", flush=True)
sys.stdin.readline()
t = time.process_time()
print(f"{{t}} {{fixes}} {{reader.counters()['sentences']}}", flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=10.0)
    args = parser.parse_args()
    epochs = [text + GSV for _, text in track(laps=10, rate_hz=args.rate)]
    with tempfile.TemporaryDirectory() as tmp:
        device = PtyGnss(Path(tmp) / "gnss")
        child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=str(ROOT), port=str(device.path))],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        start_user, start_system = _cpu_split(child.pid)
        start_cpu = start_user + start_system
        began = time.monotonic()
        count = int(args.seconds * args.rate)
        for i in range(count):
            delay = began + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            device.write(epochs[i % len(epochs)])
        time.sleep(0.3)
        wall = time.monotonic() - began
        end_user, end_system = _cpu_split(child.pid)
        cpu = end_user + end_system - start_cpu
        child.stdin.write("\n")
        child.stdin.flush()
        _, fixes, sentences = child.stdout.readline().split()
        child.wait(5)
        device.close()
    lines = [line for text in epochs[:count] for line in text.split("\r\n") if line]
    began_cpu = time.process_time()
    for line in lines:
        pynmea2.parse(line, check=True)
    bare_cpu = (time.process_time() - began_cpu) * (count / max(1, len(epochs[:count])))
    print(f"fed {count} epochs at {args.rate:g} Hz for {wall:.1f} s ({len(epochs[0])} bytes/epoch)")
    print(f"reader received {fixes} fixes, {sentences} sentences")
    print(f"reader process CPU: {cpu:.3f} s = {100 * cpu / wall:.2f}% of one core (target < 2%): "
          f"user {end_user - start_user:.2f} s, system {end_system - start_system:.2f} s")
    print(f"per epoch: {1e6 * cpu / count:.0f} us; bare pynmea2.parse of the same sentences: "
          f"{1e6 * bare_cpu / count:.0f} us per epoch")


def _cpu_seconds(pid: int) -> float:
    user, system = _cpu_split(pid)
    return user + system


def _cpu_split(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


if __name__ == "__main__":
    main()
