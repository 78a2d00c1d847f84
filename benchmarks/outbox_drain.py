"""Draining a backlog, and an alert's latency behind it, against a local mosquitto.

(a) drain rate: a backlog of N position messages (default 100,000, ~330
    bytes each) in the agent's outbox, drained through the core and the
    uplink until every row is acknowledged; against raw paho publishing the
    same payloads at QoS 1 (20 in flight) in the same run. Ratio agent/raw.
(b) alert latency: while the backlog drains, an alert is raised every 20 ms
    (through the core's queue, as a button press arrives), up to ``--alerts``;
    the time from accepting it (before the fsync) until the broker's PUBACK
    reaches the core.

    .venv/bin/python benchmarks/outbox_drain.py [--messages 100000] [--alerts 200]
"""

from __future__ import annotations

import argparse
import json
import queue
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

from agent.clock import Clock
from agent.config import AgentConfig
from agent.core import Core
from agent.messages import Priority
from agent.outbox import Outbox
from agent.uplink import Uplink
from tests.support.broker import Mosquitto

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
    cfg = AgentConfig.model_validate({
        "vehicle": {"id": "PV-BENCH-1", "unit": "Bench", "directorate": "traffic"},
        "mqtt": {"brokers": [f"mqtt://127.0.0.1:{port}"], "lab_mode": True, "protocol": protocol},
        "state_dir": str(workdir / "state"), "runtime_dir": str(workdir / "run"),
        "outbox": {"max_messages": n * 2, "max_bytes": 1 << 30},
        "health": {"interval_s": 3600},
    })
    outbox = Outbox(cfg.outbox_path, cfg.outbox)
    outbox.open()
    for _ in range(n):
        outbox.accept(outbox.seq.take(), Priority.POSITION, "patrol/PV-BENCH-1/position", PAYLOAD)
    outbox.flush()
    events: queue.Queue[Any] = queue.Queue()
    core = Core(cfg, events=events, outbox=outbox, clock=Clock())
    uplink = Uplink(cfg.mqtt, client_id="bench-agent", subscriptions=[], events=events,
                    will=lambda: (core.topics.status, core.status_message("offline", "connection lost")))
    core.uplink = uplink
    raised: dict[int, float] = {}
    latencies: list[float] = []
    at_uplink: list[float] = []
    original = uplink._ack_token

    def ack_received(token: int, refused: str | None) -> None:  # uplink thread, on the PUBACK
        if token in raised:
            at_uplink.append(time.perf_counter() - raised[token])
        original(token, refused)

    uplink._ack_token = ack_received  # type: ignore[method-assign]

    def on_ack(row_id: int) -> None:
        if row_id in raised:
            latencies.append(time.perf_counter() - raised.pop(row_id))

    def raise_alert() -> None:
        began = time.perf_counter()
        seq = outbox.seq.take()
        raised[seq] = began
        outbox.accept(seq, Priority.ALERT, core.topics.alert, PAYLOAD)
        core.pump()

    core.on_ack.append(on_ack)
    finished = threading.Event()
    drained_at: list[float] = []

    backlog_left = [n]

    def count_backlog(row_id: int) -> None:
        if row_id not in raised:
            backlog_left[0] -= 1
            if backlog_left[0] == 0:
                drained_at.append(time.perf_counter())

    core.on_ack.insert(0, count_backlog)

    def watch(now: float) -> None:
        if drained_at and not raised:
            core.stopping = True

    core.on_tick.append(watch)
    def run_core() -> None:
        core.run()
        finished.set()

    thread = threading.Thread(target=run_core, daemon=True)
    began = time.perf_counter()
    uplink.start()
    thread.start()
    for _ in range(alerts):  # one alert every 20 ms while the backlog drains
        time.sleep(0.02)
        if drained_at:
            break
        events.put(raise_alert)
    finished.wait(900)
    uplink.stop()
    outbox.close()
    elapsed = drained_at[0] - began if drained_at else float("nan")
    return n / elapsed, latencies, at_uplink


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
    for label, values in (("PUBACK received by the uplink", at_uplink),
                          ("PUBACK processed by the core ", latencies)):
        if values:
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            print(f"alert behind the backlog, accept (fsync) -> {label}, {len(values)} alerts: "
                  f"p50 {1000 * statistics.median(values):.1f} ms, p99 {1000 * p99:.1f} ms, "
                  f"max {1000 * ordered[-1]:.1f} ms (target p99 <= 20 ms)")


if __name__ == "__main__":
    main()
