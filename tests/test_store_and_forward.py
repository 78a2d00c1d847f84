"""Store-and-forward against a real mosquitto: outages, kill -9, half-open links, a full or corrupt outbox.

Each test runs the real daemon as a process, feeds it fixes through a pty and
asserts on what the broker actually delivered to a dispatch-side subscriber.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxConfig
from tests.support import faults
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector, Received
from tests.support.proxy import TcpProxy
from tests.support.pty_gnss import PtyGnss
from tests.support.rows import plant

COMMIT_WINDOW_S = 1.0


def fix_times(messages: list[Received]) -> set[str]:
    return {p["fix"]["fix_time"] for p in positions(messages) if p.get("fix")}


def assert_no_seq_reused(messages: list[Received]) -> None:
    by_seq: dict[tuple[int, int], set[str]] = defaultdict(set)
    for message in messages:
        body = message.json()
        if "seq" in body:  # the retained status has none: it is never stored, never a gap
            by_seq[(body["boot"], body["seq"])].add(body["msg_id"])
    reused = {seq: ids for seq, ids in by_seq.items() if len(ids) > 1}
    assert not reused, f"sequence numbers reused: {reused}"


@pytest.fixture
def dispatch(broker: Mosquitto, request: pytest.FixtureRequest) -> Any:
    collector = Collector(broker.port, "patrol/#", client_id=f"dispatch-{request.node.name}"[:60])
    yield collector
    collector.close()


def test_broker_down_then_back_every_position_arrives(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: the broker stopped for 4 s while fixes keep coming at 5 Hz."""
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 5)
        first = min(fix_times(dispatch.messages))
        broker.stop()
        down_at = time.monotonic()
        time.sleep(4)
        broker.start()
        time.sleep(2)
        feeder.stop()
        expected = {t for _, t in feeder.fed if t >= first}
        during = {t for at, t in feeder.fed if down_at + 0.5 < at < down_at + 3.5}
        dispatch.wait_for(lambda m: expected <= fix_times(m), timeout=20)
    finally:
        feeder.stop()
        agent.kill9()
    delivered = positions(dispatch.messages)
    assert len(during) >= 14
    historical = {p["fix"]["fix_time"] for p in delivered if p["historical"]}
    assert during <= historical, "positions held during the outage must arrive marked historical"
    assert_no_seq_reused(dispatch.messages)
    seqs = [(p["boot"], p["seq"]) for p in delivered]
    print(f"\nfed {len(expected)} fixes after the first delivery; delivered {len(delivered)} positions "
          f"({len(seqs) - len(set(seqs))} duplicates, identifiable by seq); {len(during)} produced while down")


def test_kill_9_at_random_moments_loses_no_alert_and_reuses_no_sequence_number(tmp_path: Path) -> None:
    """Injected: kill -9 of the agent 20 times, at random moments, while alerts and positions flow.

    The same scenario runs 100 times in `make soak` (tests/support/faults.py).
    """
    outcome = faults.kill9(tmp_path / "kill9", 20, seed=20261125)
    print(f"\n{outcome}")
    assert outcome.rounds == 20 and outcome.alerts_accepted >= 20
    assert outcome.alerts_lost == 0, "an accepted alert was lost"
    assert outcome.seq_reused == 0, "a sequence number was reused"
    assert outcome.telemetry_lost.startswith("at most"), outcome.telemetry_lost  # within the commit window
    assert not outcome.problems, outcome.problems


def _alert_ids(messages: list[Received]) -> set[str]:
    return {m.json()["alert_id"] for m in messages if m.topic.endswith("/alert")}


def test_half_open_link_is_detected_and_recovered_without_loss(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: the link stops forwarding in both directions without closing (half-open)."""
    proxy = TcpProxy(broker.port)
    keepalive, backoff_max = 2, 1.0
    cfg = agent_config(tmp_path, proxy.port, gnss_pty.path, mqtt__keepalive_s=keepalive,
                       mqtt__ack_timeout_s=30, mqtt__backoff_max_s=backoff_max)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 5)
        first = min(fix_times(dispatch.messages))
        connections = proxy.connections
        proxy.set_mode("blackhole")
        cut = time.monotonic()
        deadline = cut + 2 * keepalive + backoff_max + 3
        while proxy.connections == connections and time.monotonic() < deadline:
            time.sleep(0.05)
        recovered = time.monotonic() - cut
        time.sleep(2)
        feeder.stop()
        expected = {t for _, t in feeder.fed if t >= first}
        dispatch.wait_for(lambda m: expected <= fix_times(m), timeout=20)
    finally:
        feeder.stop()
        agent.kill9()
        proxy.close()
    print(f"\nhalf-open link noticed and a new connection made {recovered:.1f} s after the cut "
          f"(keepalive {keepalive} s, limit {2 * keepalive + backoff_max:.0f} s + margin)")
    assert proxy.connections > connections
    assert recovered <= 2 * keepalive + backoff_max + 1.0
    assert_no_seq_reused(dispatch.messages)


def test_full_outbox_is_reported_in_health_and_alerts_survive(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: 149 telemetry messages and 4 alerts into an outbox bounded at 100, before start."""
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, outbox__max_messages=100, health__interval_s=0.5)
    planted = plant(tmp_path / "state", "PV-TEST-1", ["alert" if i % 50 == 0 else "position" for i in range(153)],
                    OutboxConfig(max_messages=100))
    alert_ids = [alert_id for kind, _, _, alert_id in planted if kind == "alert"]
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        messages = dispatch.wait_for(lambda m: any(x.topic.endswith("/health") for x in m), timeout=15)
        dispatch.wait_for(lambda m: set(alert_ids) <= _alert_ids(m), timeout=15)
    finally:
        agent.kill9()
    health = next(m.json() for m in messages if m.topic.endswith("/health"))
    telemetry = 153 - len(alert_ids)
    assert health["outbox"]["evictions"] == telemetry - 100  # bounded at 100: the oldest evicted, never an alert
    assert set(alert_ids) <= _alert_ids(dispatch.messages)


def test_corrupt_outbox_at_start_is_moved_aside_and_reported(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: the outbox file overwritten with garbage before start."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite").write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        messages = dispatch.wait_for(
            lambda m: len(positions(m)) >= 3 and any(x.topic.endswith("/event") for x in m), timeout=15)
    finally:
        feeder.stop()
        agent.kill9()
    faults = [m.json() for m in messages if m.topic.endswith("/event")]
    assert any(f["event"] == "fault" and f["name"] == "outbox_corrupt" for f in faults)
    aside = list(state.glob("outbox.sqlite.corrupt-*"))
    assert aside and aside[0].read_bytes().startswith(b"SQLite format 3")


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_both_protocols_and_broker_rotation(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, protocol: str) -> None:
    """Injected: the first broker in the list is dead; the agent must rotate to the second."""
    from tests.support.broker import free_port

    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, mqtt__protocol=protocol)
    cfg["mqtt"]["brokers"] = [f"mqtt://127.0.0.1:{free_port()}", f"mqtt://127.0.0.1:{broker.port}"]
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 3, timeout=15)
        status = agent.ask("status")[-1]["status"]
    finally:
        feeder.stop()
        agent.kill9()
    assert status["link"]["broker"] == f"mqtt://127.0.0.1:{broker.port}"
