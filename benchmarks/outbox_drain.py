"""Draining a backlog, and an alert's way to its PUBACK behind it, on the running daemon.

(a) drain rate: a backlog of N position messages (default 100,000, as after
    an outage; planted in the outbox before start) drained by the daemon (a
    real ``patrol-agent run`` process, confined to the budget) to a local
    mosquitto, against raw paho publishing the same number of payloads of
    the same size at QoS 1 with the same in-flight window (20), as a process
    of its own confined to the same budget, once before and once after the
    daemon, in the same run. Both are timed the same way: a subscriber (QoS
    0, outside the budget) notes the first and the last message it gets; the
    rate is (N - 1) / (last - first). Ratio daemon / raw paho (the mean of
    the two raw runs).
(b) alert latency: while the backlog drains, a test alarm is asked for on
    the control socket (``patrol-agent panic test``), one every 20 ms after
    the previous one's PUBACK, up to ``--alerts``; the time from the
    daemon's "accepted" reply (the alert is in the outbox, fsynced) to its
    "delivered" reply (the broker's PUBACK came back to the core). Both
    replies take the same way out of the daemon, so their difference is the
    time inside it.

    .venv/bin/python benchmarks/outbox_drain.py [--messages 100000] [--alerts 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.control import request
from benchmarks import budget, rig
from tests.support.agent_proc import agent_config
from tests.support.broker import Mosquitto
from tests.support.rows import position

WINDOW = 20


def payload() -> bytes:
    """A position as the daemon sends one from the backlog (same size)."""
    return position(rig.VEHICLE, 1, 1)[:-1] + b',"historical":true}'


def raw_paho(port: int, n: int) -> None:
    """The baseline (its own process): paho alone, publishing as fast as WINDOW unacknowledged allow.

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

    body = payload()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    for sent in range(n):
        with cond:
            while sent - acked >= WINDOW:
                cond.wait()
        client.publish(f"patrol/{rig.VEHICLE}/position", body, qos=1)
    with cond:
        while acked < n:
            cond.wait()
    client.loop_stop()
    client.disconnect()


class Counter:
    """Dispatch's side of the drain: first and last arrival of the positions, QoS 0."""

    def __init__(self, port: int, client_id: str) -> None:
        self.cond = threading.Condition()
        self.count = 0
        self.first = self.last = float("nan")
        self.client = rig.subscriber(port, client_id, f"patrol/{rig.VEHICLE}/position", 0, self._on_message)

    def _on_message(self, *_: Any) -> None:
        now = time.perf_counter()
        with self.cond:
            if self.count == 0:
                self.first = now
            self.count += 1
            self.last = now
            self.cond.notify_all()

    def wait(self, n: int, timeout: float) -> float:
        """Messages per second over the first ``n`` (raises if they do not come)."""
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= n, timeout):
                raise TimeoutError(f"{self.count} of {n} messages arrived")
            return (n - 1) / (self.last - self.first)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def baseline(port: int, n: int, label: str) -> float:
    counter = Counter(port, f"bench-count-{label}")
    try:
        proc = subprocess.Popen([sys.executable, __file__, "--raw-paho", str(port), "--messages", str(n)])
        budget.confine(proc.pid)
        rate = counter.wait(n, timeout=600)
        proc.wait(60)
    finally:
        counter.close()
    return rate


def test_alarm(runtime_dir: Path) -> float | None:
    """One test alarm: seconds from "accepted" to "delivered", then hang up (the daemon ends it)."""
    replies = request(runtime_dir, "panic_test", timeout=30)
    accepted = None
    try:
        for reply in replies:
            stage = reply.get("stage")
            if stage == "accepted":
                accepted = time.perf_counter()
            elif stage == "delivered" and accepted is not None:
                return time.perf_counter() - accepted
            elif not reply.get("ok", True):
                raise RuntimeError(reply)
    finally:
        replies.close()  # type: ignore[attr-defined]
    return None


def daemon_drain(port: int, n: int, alerts: int, workdir: Path) -> tuple[float, list[float], int]:
    """Drain rate (msg/s), the alerts' accepted -> delivered (s), how many with > 1,000 still waiting."""
    workdir.mkdir(parents=True)
    cfg = agent_config(workdir, port, workdir / "no-receiver", log_level="WARNING",
                       reporting__moving_interval_s=3600, reporting__stopped_interval_s=3600,
                       panic__republish_s=3600, panic__test_timeout_s=600)
    (workdir / "state").mkdir()
    cfg["outbox"] = rig.plant_backlog(workdir / "state", n)
    counter = Counter(port, "bench-count-daemon")
    latencies: list[float] = []
    during = 0
    agent = rig.start_confined(workdir, cfg)
    try:
        while len(latencies) < alerts and counter.count < n * 0.95:
            time.sleep(0.02)
            took = test_alarm(agent.runtime_dir)
            if took is not None:
                latencies.append(took)
                during += counter.count < n - 1000
        rate = counter.wait(n, timeout=900)
    finally:
        agent.kill9()
        counter.close()
    return rate, latencies, during


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--alerts", type=int, default=200)
    parser.add_argument("--raw-paho", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_paho:
        raw_paho(args.raw_paho, args.messages)
        return
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(Path(tmp) / "broker")
        broker.start()
        try:
            raw = baseline(broker.port, args.messages, "before")
            ours, latencies, during = daemon_drain(broker.port, args.messages, args.alerts, Path(tmp) / "agent")
            raw_again = baseline(broker.port, args.messages, "after")
        finally:
            broker.kill()
    base = (raw + raw_again) / 2
    print(f"backlog {args.messages:,} positions of {len(payload())} bytes, local mosquitto, MQTT 5, QoS 1, "
          f"{WINDOW} in flight; budget {budget.name()} for the daemon and for raw paho")
    print(f"raw paho publish:   {raw:9,.0f} msg/s (before) {raw_again:9,.0f} msg/s (after)")
    print(f"daemon drain:       {ours:9,.0f} msg/s; ratio {ours / base:.2f}")
    print(f"test alarm accepted -> delivered (PUBACK) behind the backlog: {rig.describe(latencies)}; "
          f"{during} with more than 1,000 waiting")
    budget.report(f"backlog drain {args.messages:,}, {WINDOW} in flight", ours, "msg/s", target=f">= {0.9 * base:.0f}",
                  baseline=base, baseline_is="raw paho", note="target: 0.9 x raw paho")
    budget.report(f"alert accepted -> PUBACK behind {args.messages:,}: p50", 1000 * rig.percentile(latencies, 50),
                  "ms")
    budget.report(f"alert accepted -> PUBACK behind {args.messages:,}: p99", 1000 * rig.percentile(latencies, 99),
                  "ms", target="<= 5", note=f"{during}/{len(latencies)} with > 1,000 waiting")


if __name__ == "__main__":
    main()
