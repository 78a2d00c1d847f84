"""From the officer's thumb to dispatch: a panic press on the running daemon -> the alert at a subscriber.

The daemon is a real ``patrol-agent run`` process in simulation (mock GPIO),
confined to the budget (``benchmarks/budget.py``); the broker, the GNSS
feeder and dispatch's subscriber run in this process or their own, outside
its cgroup. The press is ``sim_press`` on the daemon's control socket (what
``patrol-agent sim press driver`` sends): the daemon drives the mock pin of
the ``driver`` button, the edge goes the way a real GPIO edge goes
(gpiozero's callback, an Edge on the core's queue, the debouncer, the alert
fsynced into the outbox, the uplink). The debounce is leading-edge: the
first edge counts at once, so it is in the path and adds nothing (its 30 ms
lockout only spaces the presses). The clock starts before the request is
written to the socket and stops when dispatch's subscriber has the alert
(state raised, first attempt).

Between presses dispatch clears the alert over MQTT (``alert/ack``, action
clear) and the next press waits for the ``cleared`` copy.

Twice: idle, and while a backlog of ``--backlog`` positions (planted before
start, as after an outage) drains and the receiver sends at 10 Hz through a
pty. p50 / p99 / max over ``--presses``.

    .venv/bin/python benchmarks/panic_latency.py [--presses 200] [--backlog 250000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.control import request
from benchmarks import budget, rig
from tests.support.agent_proc import GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.pty_gnss import PtyGnss


class Dispatch:
    """Stamps each alert's first copy; clears alerts on request; notes the cleared copies."""

    def __init__(self, port: int) -> None:
        self.cond = threading.Condition()
        self.raised: dict[str, float] = {}
        self.cleared: set[str] = set()
        self.client = rig.subscriber(port, "bench-dispatch", f"patrol/{rig.VEHICLE}/alert", 1, self._on_message)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        body = json.loads(msg.payload)
        with self.cond:
            if body["state"] == "raised" and body["attempt"] == 1:
                self.raised.setdefault(body["alert_id"], now)
            elif body["state"] == "cleared":
                self.cleared.add(body["alert_id"])
            self.cond.notify_all()

    def wait_new(self, known: int, timeout: float = 30.0) -> tuple[str, float]:
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.raised) > known, timeout):
                raise TimeoutError("no alert arrived")
            alert_id = list(self.raised)[-1]
            return alert_id, self.raised[alert_id]

    def clear(self, alert_id: str, timeout: float = 30.0) -> None:
        self.client.publish(f"patrol/{rig.VEHICLE}/alert/ack",
                            json.dumps({"alert_id": alert_id, "action": "clear", "operator": "bench"}), qos=1)
        with self.cond:
            if not self.cond.wait_for(lambda: alert_id in self.cleared, timeout):
                raise TimeoutError("the clear was not confirmed")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def run(workdir: Path, port: int, presses: int, backlog: int) -> tuple[list[float], int, int]:
    """Latencies (s), how many presses found more than 1,000 messages waiting, the depth left at the end."""
    workdir.mkdir(parents=True)
    device = PtyGnss(workdir / "gnss")
    cfg = agent_config(workdir, port, device.path, reporting__moving_interval_s=60,
                       reporting__stopped_interval_s=60, reporting__emergency_interval_s=60,
                       panic__republish_s=60, log_level="WARNING")
    (workdir / "state").mkdir()
    if backlog:
        cfg["outbox"] = rig.plant_backlog(workdir / "state", backlog)
    feeder = GnssFeeder(device, rate_hz=10).start() if backlog else None
    dispatch = Dispatch(port)
    latencies: list[float] = []
    during = 0
    agent = rig.start_confined(workdir, cfg)
    try:
        rig.wait_until(lambda: agent.ask("status")[-1]["status"]["link"]["connected"], 60)
        for _ in range(presses):
            known = len(dispatch.raised)
            pressed = time.perf_counter()
            for _reply in request(agent.runtime_dir, "sim_press", name="driver"):
                pass
            alert_id, arrived = dispatch.wait_new(known)
            latencies.append(arrived - pressed)
            if backlog and rig.depth(agent) > 1000:
                during += 1
            dispatch.clear(alert_id)
            agent.ask("sim_release", name="driver")
            time.sleep(0.05)  # past the 30 ms lockout
        left = rig.depth(agent)
    finally:
        agent.kill9()
        if feeder:
            feeder.stop()
        dispatch.close()
        device.close()
    return latencies, during, left


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presses", type=int, default=200)
    parser.add_argument("--backlog", type=int, default=250_000)
    args = parser.parse_args()
    target = "<= 10" if budget.name() == "full" else "<= 50"
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            idle, _, _ = run(Path(tmp) / "idle", broker.port, args.presses, 0)
            busy, during, left = run(Path(tmp) / "busy", broker.port, args.presses, args.backlog)
        finally:
            broker.kill()
    print(f"press (sim_press on the control socket, leading-edge debounce in the path) -> alert at a dispatch "
          f"subscriber; daemon budget: {budget.name()}")
    print(f"idle:                                 {rig.describe(idle)}")
    print(f"{args.backlog:,} backlog draining + GNSS 10 Hz: {rig.describe(busy)}; {during} presses while more "
          f"than 1,000 messages were waiting; {left:,} left at the end")
    budget.report("press -> dispatch, idle: p99", 1000 * rig.percentile(idle, 99), "ms")
    budget.report(f"press -> dispatch, {args.backlog:,} drain + GNSS 10 Hz: p50", 1000 * rig.percentile(busy, 50),
                  "ms")
    budget.report(f"press -> dispatch, {args.backlog:,} drain + GNSS 10 Hz: p99", 1000 * rig.percentile(busy, 99),
                  "ms", target=target, note=f"{during}/{len(busy)} presses with > 1,000 waiting")


if __name__ == "__main__":
    main()
