"""Epoch written to Fix delivered: a receiver whose cycle is learnt against the quiet-line fallback.

Through a real pty and the real GnssReader (its own thread, in this process):
a writer plays a u-blox-like receiver at 10 Hz, each sentence paced as a
115200-baud line would deliver it, and notes the moment the epoch's last byte
was written; ``on_fix`` notes when the reader handed the epoch over. Three
runs, same stream, same machine, one after the other:

- learnt: the reader learns which sentence closes the cycle (after three
  epochs) and releases each epoch on it;
- quiet gap: learning off (``learn_cycle=False``), the previous behaviour:
  an epoch goes out when the line has been quiet for ``quiet_flush_ms``;
- varying cycle: learning on, but a ZDA after the GLL in one epoch of four
  makes the cycle unlearnable; the reader falls back to the quiet gap;
- split epoch: learning on, the RMC written 60 ms before the rest of the
  epoch (a USB or Bluetooth adapter's chunks): the reader must wait for the
  rest, learn the GLL as the end and release there.

Prints median and p99 per run (the first five epochs, learning, excluded).

End to end: the same learnt stream written to the pty of a running daemon
(a real ``patrol-agent run`` process, confined to the budget) whose
reporting policy sends every fix (an interval shorter than the receiver's
period), to a local mosquitto; the time from the epoch's last byte written
to the position at a dispatch subscriber (outside the budget), matched by
the fix's time. This is the figure with a target (median <= 10 ms).

    .venv/bin/python benchmarks/gnss_epoch_latency.py [--epochs 200] [--rate 10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import json  # noqa: E402

from agent.config import GnssConfig  # noqa: E402
from benchmarks import budget, rig  # noqa: E402
from drivers.gnss import Fix  # noqa: E402
from drivers.gnss.reader import GnssReader  # noqa: E402
from tests.support.agent_proc import agent_config  # noqa: E402
from tests.support.broker import Mosquitto  # noqa: E402
from tests.support.mqtt import Collector  # noqa: E402
from tests.support.nmea import sentence  # noqa: E402
from tests.support.pty_gnss import PtyGnss  # noqa: E402

BAUD_BYTES_PER_S = 115_200 / 10
P = "4404.1237,N,01213.8476,E"
WARMUP = 5


def epoch_lines(i: int, rate: int, zda_every: int | None) -> list[bytes]:
    seconds = i / rate
    hms = f"12{int(seconds) // 60:02d}{int(seconds) % 60:02d}.{round((seconds % 1) * 100):02d}"
    bodies = [f"GNRMC,{hms},A,{P},0.1,12.0,020325,,,A,V", "GNVTG,12.0,T,,M,0.1,N,0.2,K,A",
              f"GNGGA,{hms},{P},1,12,0.6,34.0,M,45.1,M,,",
              "GNGSA,A,3,02,05,08,10,,,,,,,,,1.0,0.6,0.8,1", "GNGSA,A,3,65,66,,,,,,,,,,,1.0,0.6,0.8,2",
              "GPGSV,2,1,06,02,51,278,26,07,40,274,18,08,77,310,32,10,52,059,30",
              "GPGSV,2,2,06,14,35,120,30,23,13,040,43", f"GNGLL,{P},{hms},A,A"]
    if zda_every and i % zda_every == 0:
        bodies.append(f"GNZDA,{hms},02,03,2025,00,00")
    return [sentence(body).encode() for body in bodies]


def run(name: str, *, learn: bool, zda_every: int | None, epochs: int, rate: int, quiet_ms: int,
        split_s: float = 0.0) -> list[float]:
    arrived: dict[int, float] = {}
    lock = threading.Lock()

    def on_fix(fix: Fix) -> None:
        now = time.monotonic()
        if fix.time_ms is not None:
            with lock:
                arrived.setdefault(fix.time_ms % 86_400_000, now)

    written: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        device = PtyGnss(Path(tmp) / "gnss")
        cfg = GnssConfig(port=str(device.path), baudrate=115200, quiet_flush_ms=quiet_ms)
        reader = GnssReader(cfg, on_fix=on_fix, learn_cycle=learn)
        reader.start()
        deadline = time.monotonic() + 5
        while reader.opens == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        began = time.monotonic()
        for i in range(epochs):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            lines = epoch_lines(i, rate, zda_every)
            for n, line in enumerate(lines[:-1]):
                device.write(line)
                time.sleep(len(line) / BAUD_BYTES_PER_S + (split_s if n == 0 else 0))  # the line's own pace
            device.write(lines[-1])
            written[round(12 * 3_600_000 + i * 1000 / rate)] = time.monotonic()
        time.sleep(0.5)
        reader.stop()
        learnt = reader.decoder.cycle_learnt
        counters = reader.counters()
        device.close()
    latencies = [1000 * (arrived[t] - w) for t, w in sorted(written.items())[WARMUP:] if t in arrived]
    print(f"{name:13s} epochs {len(latencies):4d}  median {statistics.median(latencies):6.2f} ms  "
          f"p99 {percentile(latencies, 99):6.2f} ms  max {max(latencies):6.2f} ms   (cycle learnt: {learnt}; "
          f"ended by ender {counters['ended_by_ender']}, quiet {counters['ended_by_quiet']}, "
          f"time {counters['ended_by_time']}; late {counters['late']})")
    return latencies


def play(device: PtyGnss, epochs: int, rate: int) -> dict[int, float]:
    """The learnt stream at ``rate``, each line at its baud pace; time of day (ms) -> last byte written."""
    written: dict[int, float] = {}
    began = time.monotonic()
    for i in range(epochs):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        lines = epoch_lines(i, rate, None)
        for line in lines[:-1]:
            device.write(line)
            time.sleep(len(line) / BAUD_BYTES_PER_S)
        device.write(lines[-1])
        written[round(12 * 3_600_000 + i * 1000 / rate)] = time.monotonic()
    return written


def end_to_end(epochs: int, rate: int) -> list[float]:
    """Epoch's last byte written -> position at a dispatch subscriber, through the running daemon (ms)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(work / "broker")
        broker.start()
        device = PtyGnss(work / "gnss")
        interval = 0.5 / rate  # shorter than the receiver's period: every fix is sent
        cfg = agent_config(work, broker.port, device.path, log_level="WARNING", reporting__moving_interval_s=interval,
                           reporting__stopped_interval_s=interval, gnss__baudrate=115200)
        dispatch = Collector(broker.port, f"patrol/{rig.VEHICLE}/position", client_id="bench-epoch",
                             persistent=False)
        agent = rig.start_confined(work, cfg)
        try:
            time.sleep(0.5)
            written = play(device, epochs, rate)
            time.sleep(1.0)
        finally:
            agent.kill9()
            dispatch.close()
            device.close()
            broker.kill()
    arrived: dict[int, float] = {}
    for message in dispatch.messages:
        fix = json.loads(message.payload).get("fix") or {}
        if fix.get("fix_time"):
            hms = fix["fix_time"][11:23]
            ms = ((int(hms[0:2]) * 60 + int(hms[3:5])) * 60 + int(hms[6:8])) * 1000 + int(hms[9:12])
            arrived.setdefault(ms, message.at)
    latencies = [1000 * (arrived[t] - w) for t, w in sorted(written.items())[WARMUP:] if t in arrived]
    print(f"end to end    epochs {len(latencies):4d} of {epochs - WARMUP}  "
          f"median {statistics.median(latencies):6.2f} ms"
          f"  p99 {percentile(latencies, 99):6.2f} ms  max {max(latencies):6.2f} ms   (daemon budget: {budget.name()})")
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--quiet-ms", type=int, default=GnssConfig.model_fields["quiet_flush_ms"].default)
    args = parser.parse_args()
    print(f"epoch's last byte written to on_fix, {args.rate} Hz, quiet gap {args.quiet_ms} ms, real pty")
    learnt = run("learnt", learn=True, zda_every=None, epochs=args.epochs, rate=args.rate, quiet_ms=args.quiet_ms)
    quiet = run("quiet gap", learn=False, zda_every=None, epochs=args.epochs, rate=args.rate,
                quiet_ms=args.quiet_ms)
    run("varying cycle", learn=True, zda_every=4, epochs=args.epochs, rate=args.rate, quiet_ms=args.quiet_ms)
    run("split epoch", learn=True, zda_every=None, epochs=args.epochs, rate=args.rate, quiet_ms=args.quiet_ms,
        split_s=0.06)
    print(f"ratio learnt / quiet gap: median {statistics.median(learnt) / statistics.median(quiet):.3f}, "
          f"p99 {percentile(learnt, 99) / percentile(quiet, 99):.3f}")
    whole = end_to_end(args.epochs, args.rate)
    budget.report("epoch written -> position at dispatch, learnt cycle: median", statistics.median(whole), "ms",
                  target="<= 10", note=f"{args.rate} Hz, every fix sent, through the daemon")
    budget.report("epoch written -> position at dispatch, learnt cycle: p99", percentile(whole, 99), "ms")
    budget.report("epoch written -> on_fix (reader alone), learnt: median", statistics.median(learnt), "ms",
                  baseline=statistics.median(quiet), baseline_is="quiet gap")


if __name__ == "__main__":
    main()
