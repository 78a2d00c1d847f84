"""What the daemon benchmarks share: a backlog planted before start, the daemon under the budget, figures.

The daemon is a real ``patrol-agent run`` process (tests/support/agent_proc.py)
confined with :func:`benchmarks.budget.confine` as soon as it exists; the
broker, the feeders and the subscribers run outside its cgroup.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox import Outbox
from benchmarks import budget
from tests.support.agent_proc import AgentProcess
from tests.support.rows import position

VEHICLE = "PV-TEST-1"


def plant_backlog(state_dir: Path, n: int, vehicle: str = VEHICLE) -> dict[str, Any]:
    """``n`` real position messages of an earlier boot in the outbox (the outbox checks what it reads
    back); returns the outbox section of the config that holds them."""
    section = {"max_messages": max(1000, n * 2), "max_bytes": 1 << 31}
    box = Outbox(state_dir / "outbox.sqlite", OutboxConfig(**section))
    box.open()
    for _ in range(n):
        seq = box.seq.take()
        box.accept(seq, Priority.POSITION, f"patrol/{vehicle}/position", position(vehicle, box.seq.boot, seq))
    box.flush()
    box.close()
    return section


def start_confined(workdir: Path, cfg: dict[str, Any], *, ready_timeout: float = 120.0) -> AgentProcess:
    """The daemon started, confined to the budget at once (its start-up too), and answering."""
    agent = AgentProcess(workdir, cfg)
    agent.start(wait=False)
    assert agent.proc is not None
    budget.confine(agent.proc.pid)
    agent.wait_ready(timeout=ready_timeout)
    return agent


def depth(agent: AgentProcess) -> int:
    return int(agent.ask("status")[-1]["status"]["outbox"]["depth"])


def wait_until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (p99 of 200 values: the 198th smallest)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(len(ordered) * p / 100) - 1))]


def describe(values: list[float]) -> str:
    if not values:
        return "no values"
    return (f"{len(values)} values, p50 {1000 * statistics.median(values):.1f} ms, p99 "
            f"{1000 * percentile(values, 99):.1f} ms, max {1000 * max(values):.1f} ms")


def subscriber(port: int, client_id: str, topic: str, qos: int,
               on_message: Callable[[Any, Any, mqtt.MQTTMessage], None]) -> mqtt.Client:
    """Dispatch's side, outside the daemon's budget: a client subscribed to ``topic`` (returns once the
    broker has acknowledged the subscription)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(topic, qos=qos)
    subscribed.wait(10)
    return client
