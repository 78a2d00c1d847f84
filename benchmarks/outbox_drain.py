"""Draining a backlog, and an alert's latency behind it, against a local mosquitto.

(a) drain rate: a backlog of N position messages (default 100,000, ~330
    bytes each) in the agent's outbox, drained through the core and the
    uplink until every row is acknowledged; against raw paho publishing the
    same payloads at QoS 1 (20 in flight) in the same run. Ratio agent/raw.
(b) alert latency: while the backlog drains, a test alarm is raised every
    20 ms (through the core's queue, as a button press arrives), up to
    ``--alerts``; the time from the request until a dispatch subscriber has
    it (mosquitto sends the PUBACK and the copy to subscribers in the same
    turn of its loop).

    .venv/bin/python benchmarks/outbox_drain.py [--messages 100000] [--alerts 200]
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
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.app import Agent
from agent.config import AgentConfig
from agent.messages import Priority
from agent.outbox import Outbox
from tests.support.broker import Mosquitto
from tests.support.rows import position

PAYLOAD = json.dumps({
    "schema_version": 1, "kind": "position", "vehicle_id": "PV-BENCH-1", "seq": 0,
    "msg_id": "00000000-0000-4000-8000-000000000000", "time": "2026-11-25T08:00:00.000Z",
    "time_source": "gnss", "reason": "interval",
    "fix": {"lat": 42.697712, "lon": 23.321901, "alt_msl": 560.2, "speed_mps": 13.4, "course_deg": 109.8,
            "mode": 3, "sats_used": 9, "hdop": 0.9, "quality": 1, "fix_time": "2026-11-25T08:00:00.000Z"},
    "gnss_mode": 3, "alert_id": None,
}).encode()


def raw_paho(port: int, n: int, protocol: str) -> float:
    """The baseline: paho alone, publishing as fast as 20 unacknowledged messages allow.

    (Handing paho all N at once is not a baseline: paho scans its whole queue
    on every PUBACK, which is quadratic at 100,000.)
    """
    cond = threading.Condition()
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw",
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311)
    client.max_inflight_messages_set(20)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    began = time.perf_counter()
    for sent in range(n):
        with cond:
            while sent - acked >= 20:
                cond.wait()
        client.publish("patrol/PV-BENCH-1/position", PAYLOAD, qos=1)
    with cond:
        while acked < n:
            cond.wait()
    elapsed = time.perf_counter() - began
    client.loop_stop()
    client.disconnect()
    return n / elapsed


def agent_drain(port: int, n: int, alerts: int, workdir: Path,
                protocol: str) -> tuple[float, list[float], list[float]]:
    """The whole agent in this process: a backlog of ``n`` in its outbox, drained to the broker."""
    cfg = AgentConfig.model_validate({
        "vehicle": {"id": "PV-BENCH-1", "unit": "Bench", "directorate": "traffic"},
        "mqtt": {"brokers": [f"mqtt://127.0.0.1:{port}"], "lab_mode": True, "protocol": protocol},
        "gnss": {"port": str(workdir / "no-receiver")},
        "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run"),
        "outbox": {"max_messages": n * 2, "max_bytes": 1 << 30},
        "health": {"interval_s": 3600}, "panic": {"republish_s": 3600}, "simulation": True,
    })
    outbox = Outbox(cfg.outbox_path, cfg.outbox)
    outbox.open()
    for _ in range(n):  # real messages of an earlier boot: the outbox checks what it reads back
        seq = outbox.seq.take()
        outbox.accept(seq, Priority.POSITION, "patrol/PV-BENCH-1/position",
                      position("PV-BENCH-1", outbox.seq.boot, seq))
    outbox.flush()
    outbox.close()
    received: dict[str, float] = {}
    delivered: dict[str, float] = {}
    cond = threading.Condition()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        alert = json.loads(msg.payload)
        with cond:
            received.setdefault(alert["alert_id"], time.perf_counter())
            cond.notify_all()

    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-dispatch")
    watcher.on_message = on_message
    watcher.connect("127.0.0.1", port)
    watcher.subscribe("patrol/PV-BENCH-1/alert", qos=1)
    watcher.loop_start()
    agent = Agent(cfg)
    raised: dict[str, float] = {}
    agent.start()
    core = threading.Thread(target=agent.run, daemon=True)
    began = time.perf_counter()
    core.start()
    assert agent.alerts is not None
    panic = agent.alerts
    drained_at = float("nan")
    try:
        for _ in range(alerts):  # one alert every 20 ms while the backlog drains, through the core's queue
            time.sleep(0.02)
            pressed = time.perf_counter()
            alert = agent.on_core(lambda: panic.raise_alert("bench", test=True))
            raised[alert.alert_id] = pressed
            if agent.on_core(lambda: agent.outbox.depth) <= len(raised):
                break
        while True:
            depth, state = agent.on_core(lambda: (agent.outbox.depth, {a.alert_id: a.state for a in
                                                                      panic._alerts()}))
            for alert_id, alert_state in state.items():
                if alert_state != "raised" and alert_id in raised:
                    delivered.setdefault(alert_id, time.perf_counter())
            if depth <= len(state):  # only the open test alarms are left
                drained_at = time.perf_counter()
                break
            time.sleep(0.05)
        with cond:
            cond.wait_for(lambda: set(raised) <= set(received), timeout=10)
    finally:
        agent.stop()
        core.join(10)
        agent.shutdown()
        watcher.loop_stop()
    at_subscriber = [received[a] - raised[a] for a in raised if a in received]
    return n / (drained_at - began), at_subscriber, [delivered[a] - raised[a] for a in raised if a in delivered]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version for both sides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            raw = raw_paho(broker.port, args.messages, args.protocol)
            ours, latencies, at_uplink = agent_drain(broker.port, args.messages, args.alerts, Path(tmp) / "agent",
                                                     args.protocol)
            raw_again = raw_paho(broker.port, args.messages, args.protocol)
        finally:
            broker.kill()
    baseline = (raw + raw_again) / 2
    print(f"backlog {args.messages:,} messages of {len(PAYLOAD)} bytes, local mosquitto, MQTT {args.protocol}, "
          "QoS 1, 20 in flight")
    print(f"raw paho publish:            {raw:9,.0f} msg/s (before) {raw_again:9,.0f} msg/s (after)")
    print(f"agent outbox drain:          {ours:9,.0f} msg/s  (acknowledged and deleted from the outbox)")
    print(f"ratio agent / raw paho:      {ours / baseline:.2f}  (target >= 0.6)")
    for label, values in (("received by a dispatch subscriber", latencies),
                          ("seen delivered by a 50 ms poll ", at_uplink)):
        if values:
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"alert behind the backlog, accept (fsync) -> {label}, {len(values)} alerts: "
                  f"p50 {1000 * statistics.median(values):.1f} ms, p99 {1000 * p99:.1f} ms, "
                  f"max {1000 * ordered[-1]:.1f} ms (target p99 <= 20 ms)")


if __name__ == "__main__":
    main()
