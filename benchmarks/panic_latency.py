"""From the officer's thumb to dispatch: panic button edge -> alert received by a subscriber.

The whole agent runs in this process (so the benchmark can drive the mock
pin) against a local mosquitto; a dispatch-side subscriber in the same
process stamps each alert's arrival. Each round: the mock pin goes active
(press trigger, the agent's own 30 ms debounce), the alert arrives, the
emergency is closed on the core thread and the button released. Run twice:
idle, and while a backlog drains and the receiver runs at 10 Hz through a
pty. Prints p50 / p99 / max over N presses for each.

    .venv/bin/python benchmarks/panic_latency.py [--presses 200] [--backlog 250000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox import Outbox
from tests.support.agent_proc import GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.pty_gnss import PtyGnss
from tests.support.rows import position


class Dispatch:
    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.raised: dict[str, float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-dispatch")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("patrol/+/alert", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(msg.payload)
        if body["state"] == "raised" and body["attempt"] == 1:
            with self.cond:
                self.raised.setdefault(body["alert_id"], now)
                self.cond.notify_all()

    def wait_new(self, known: int, timeout: float = 5.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.raised) > known, timeout):
                raise TimeoutError("no alert arrived")
            return max(self.raised.values())


def run(workdir: Path, port: int, presses: int, backlog: int) -> tuple[list[float], int]:
    workdir.mkdir(parents=True)
    device = PtyGnss(workdir / "gnss")
    cfg = agent_config(workdir, port, device.path, reporting__moving_interval_s=60,
                       reporting__stopped_interval_s=60, panic__republish_s=60, log_level="WARNING")
    cfg["reporting"]["emergency_interval_s"] = 60
    if backlog:
        cfg["outbox"] = {"max_messages": backlog * 2, "max_bytes": 1 << 31}
        box = Outbox(workdir / "state" / "outbox.sqlite", OutboxConfig(**cfg["outbox"]))
        box.open()
        for _ in range(backlog):  # real messages of an earlier boot: the outbox checks what it reads back
            seq = box.seq.take()
            box.accept(seq, Priority.POSITION, "patrol/PV-TEST-1/position", position("PV-TEST-1", box.seq.boot, seq))
        box.close()
    feeder = GnssFeeder(device, rate_hz=10).start() if backlog else None
    dispatch = Dispatch(port)
    factory = MockFactory()
    latencies: list[float] = []
    during_backlog = 0
    try:
        with RunningAgent(cfg, factory) as agent:
            time.sleep(0.5)
            pin = factory.pin(17)
            for _ in range(presses):
                known = len(dispatch.raised)
                pressed = time.perf_counter()
                pin.drive_low()
                arrived = dispatch.wait_new(known)
                latencies.append(arrived - pressed)
                if backlog and agent.on_core(lambda: agent.agent.outbox.depth) > 1000:
                    during_backlog += 1
                alerts = agent.agent.alerts
                assert alerts is not None
                agent.on_core(lambda a=alerts: a.cancel("benchmark"))
                pin.drive_high()
                time.sleep(0.05)  # past the 30 ms debounce lockout
    finally:
        if feeder:
            feeder.stop()
        dispatch.client.loop_stop()
        device.close()
    return latencies, during_backlog


def summary(label: str, values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{label}: {len(values)} presses, p50 {1000 * statistics.median(values):.1f} ms, "
            f"p99 {1000 * p99:.1f} ms, max {1000 * ordered[-1]:.1f} ms (target p99 <= 20 ms under backlog)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=250_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            idle, _ = run(Path(tmp) / "idle", broker.port, args.presses, 0)
            busy, during = run(Path(tmp) / "busy", broker.port, args.presses, args.backlog)
        finally:
            broker.kill()
    print("press (mock pin edge) -> alert received by a dispatch subscriber on the local broker")
    print(summary("idle                          ", idle))
    print(summary("backlog draining + GNSS 10 Hz ", busy)
          + f"; {during} of them while more than 1,000 messages were still waiting")


if __name__ == "__main__":
    main()
