"""The agent against the other brokers a dispatch centre may run: NATS (JetStream, MQTT) and RabbitMQ
(MQTT plugin), each started by the test on free ports of 127.0.0.1, with the agent's default MQTT settings
(``protocol: auto``, plain TCP in lab mode). Everything asserted is what the broker delivered to a
dispatch-side subscriber, or what the daemon itself reports.

Each broker is started once for the module (RabbitMQ takes ~8 s); each test uses a vehicle id of its
own, so that sessions and retained messages of one test never meet another's.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.checks import Check, Report
from agent.config import load
from agent.doctor_link import check_link
from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config, positions
from tests.support.faults import accept_test_alarm, alert_ids, seq_reuses
from tests.support.mqtt import Collector, Received
from tests.support.other_brokers import NatsServer, RabbitMq, available
from tests.support.pty_gnss import PtyGnss

KINDS = ("nats", "rabbitmq")
_vehicles = itertools.count(1)


@pytest.fixture(scope="module", params=KINDS)
def other_broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    kind = request.param
    why = available()[kind]
    if why is not None:
        pytest.skip(why)
    server = (NatsServer if kind == "nats" else RabbitMq)(tmp_path_factory.mktemp(kind))
    server.start()
    print(f"\n{kind} started in {server.started_in:.1f} s")
    yield server
    server.close()


@pytest.fixture
def vehicle(other_broker: Any) -> str:
    return f"PV-{other_broker.name.upper()}-{next(_vehicles)}"


@pytest.fixture
def dispatch(other_broker: Any, vehicle: str) -> Iterator[Collector]:
    collector = Collector(other_broker.port, f"patrol/{vehicle}/#", client_id=f"dispatch-{vehicle}")
    yield collector
    collector.close()


@pytest.fixture
def gnss(tmp_path: Path) -> Iterator[PtyGnss]:
    device = PtyGnss(tmp_path / "gnss")
    yield device
    device.close()


def default_config(tmp_path: Path, port: int, gnss_path: Path, vehicle: str, **mqtt_settings: Any) -> dict[str, Any]:
    """The test rig's config (pty receiver, mock GPIO, a position per fix) with the agent's DEFAULT MQTT
    settings: only the broker and lab mode are given (plus what a test pins on purpose)."""
    cfg = agent_config(tmp_path, port, gnss_path, vehicle__id=vehicle, panic__republish_s=60)
    cfg["mqtt"] = {"brokers": [f"mqtt://127.0.0.1:{port}"], "lab_mode": True, **mqtt_settings}
    return cfg


def send(port: int, topic: str, payload: dict[str, Any]) -> None:
    """Dispatch publishes one QoS 1 message (MQTT 3.1.1, a client id of its own)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dispatch-send-{uuid.uuid4().hex[:8]}",
                         protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def alerts(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith("/alert")]


def link(agent: AgentProcess) -> dict[str, Any]:
    state: dict[str, Any] = agent.ask("status")[-1]["status"]["link"]
    return state


def wait_link(agent: AgentProcess, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = link(agent)
        if state["connected"]:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"no link after {timeout:g} s: {state}")
        time.sleep(0.1)


def test_positions_alert_acknowledgement_and_the_version_in_use(
        tmp_path: Path, other_broker: Any, vehicle: str, dispatch: Collector, gnss: PtyGnss) -> None:
    cfg = default_config(tmp_path, other_broker.port, gnss.path, vehicle)
    cfg["health"]["interval_s"] = 1
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss, rate_hz=5).start()
    agent.start()
    try:
        got = dispatch.wait_for(lambda m: len(positions(m)) >= 5 and any(x.topic.endswith("/health") for x in m),
                                timeout=30)
        health = [m.json() for m in got if m.topic.endswith("/health")][-1]
        assert health["link"]["protocol"] == "3.1.1" and health["link"]["connected"]
        state = wait_link(agent)
        assert state["protocol"] == "3.1.1" and state["broker"] == f"mqtt://127.0.0.1:{other_broker.port}"
        assert "trying MQTT 3.1.1" in state["last_error"], "the version probe is not shown as a plain error"
        shown = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--runtime-dir", str(agent.runtime_dir)],
                               cwd=ROOT, capture_output=True, text=True, timeout=30,
                               env={**os.environ, "COLUMNS": "200"})
        assert shown.returncode == 0, shown.stderr
        assert "over MQTT 3.1.1" in shown.stdout, shown.stdout

        # a real alarm (the simulated driver's button) and dispatch's acknowledgement on alert/ack
        assert agent.ask("sim_press", name="driver")[-1]["ok"]
        raised = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1, timeout=15))[0]
        assert raised["state"] in ("raised", "delivered") and raised["test"] is False
        send(other_broker.port, f"patrol/{vehicle}/alert/ack",
             {"alert_id": raised["alert_id"], "action": "acknowledge", "operator": "desk-1"})
        got = dispatch.wait_for(lambda m: any(a["state"] == "acknowledged" for a in alerts(m)), timeout=15)
        assert agent.ask("alert")[-1]["emergency"]["state"] == "acknowledged"

        # the clear, as a command on cmd: the vehicle answers on reply and publishes the alert cleared
        now = datetime.now(UTC)
        send(other_broker.port, f"patrol/{vehicle}/cmd",
             {"command_id": "c-1", "vehicle_id": vehicle, "verb": "clear_alert", "issued_at": now.isoformat(),
              "expires_at": (now + timedelta(minutes=5)).isoformat(),
              "args": {"alert_id": raised["alert_id"], "operator": "desk-1"}})
        got = dispatch.wait_for(lambda m: any(a["state"] == "cleared" for a in alerts(m))
                                and any(x.topic.endswith("/reply") for x in m), timeout=15)
        replies = [m.json() for m in got if m.topic.endswith("/reply")]
        assert [r["ok"] for r in replies if r["command_id"] == "c-1"] == [True]
        assert agent.ask("alert")[-1]["emergency"] is None
        status = [m for m in got if m.topic.endswith("/status")]
        assert status and status[-1].json()["state"] == "online"
    finally:
        feeder.stop()
        agent.kill9()
    assert {a["alert_id"] for a in alerts(got)} == {raised["alert_id"]}
    assert seq_reuses(got) == 0


def test_a_test_alarm_is_acknowledged_by_the_ack_alert_command(
        tmp_path: Path, other_broker: Any, vehicle: str, dispatch: Collector, gnss: PtyGnss) -> None:
    """`patrol-agent panic test` as the technician runs it; dispatch acknowledges with a command on cmd."""
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    agent.start()
    try:
        wait_link(agent)
        tool = subprocess.Popen([sys.executable, "-m", "agent.cli", "panic", "test", "--runtime-dir",
                                 str(agent.runtime_dir), "--timeout", "30"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        raised = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1, timeout=15))[0]
        now = datetime.now(UTC)
        send(other_broker.port, f"patrol/{vehicle}/cmd",
             {"command_id": "ack-1", "vehicle_id": vehicle, "verb": "ack_alert", "issued_at": now.isoformat(),
              "expires_at": (now + timedelta(minutes=5)).isoformat(), "args": {"alert_id": raised["alert_id"]}})
        got = dispatch.wait_for(lambda m: any(a["state"] == "acknowledged" for a in alerts(m)), timeout=15)
        out, err = tool.communicate(timeout=30)
    finally:
        agent.kill9()
    assert tool.returncode == 0, out + err
    stages = [line.split()[2] for line in out.splitlines() if "test alarm" in line]
    assert stages == ["accepted", "delivered", "acknowledged"], out
    sent = alerts(got)
    assert {a["alert_id"] for a in sent} == {raised["alert_id"]} and all(a["test"] for a in sent)


def test_kill_9_rounds_lose_no_alert_and_the_daemon_reconnects_each_time(
        tmp_path: Path, other_broker: Any, vehicle: str, dispatch: Collector, gnss: PtyGnss) -> None:
    rng = random.Random(7)
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    feeder = GnssFeeder(gnss, rate_hz=5).start()
    accepted: list[str] = []
    links: list[dict[str, Any]] = []
    try:
        for _ in range(5):
            agent.start()
            accept_test_alarm(agent, accepted)  # accepted: on disk before the reply
            links.append(wait_link(agent))
            deadline = time.monotonic() + rng.uniform(0.3, 1.5)
            while time.monotonic() < deadline:
                accept_test_alarm(agent, accepted)
                time.sleep(rng.uniform(0.05, 0.3))
            agent.kill9()
        agent.start()
        links.append(wait_link(agent))
        got = dispatch.wait_for(lambda m: set(accepted) <= alert_ids(m), timeout=60)
    finally:
        feeder.stop()
        agent.kill9()
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        assert db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert len(accepted) >= 5
    assert set(accepted) <= alert_ids(got), f"lost: {set(accepted) - alert_ids(got)}"
    assert [state["protocol"] for state in links] == ["3.1.1"] * 6
    fallbacks = [line for line in agent.log.read_text().splitlines() if "trying MQTT 3.1.1" in line]
    assert len(fallbacks) == 1, f"the version the broker took is remembered across restarts: {fallbacks}"
    assert seq_reuses(got) == 0
    assert len(positions(got)) >= 5



def test_an_acknowledgement_sent_while_the_vehicle_is_offline_reaches_it_when_it_is_back(
        tmp_path: Path, other_broker: Any, vehicle: str, dispatch: Collector, gnss: PtyGnss) -> None:
    """MQTT 3.1.1 with clean session off: the broker keeps the vehicle's subscriptions and queues what
    dispatch sends while the vehicle is away (killed, or in a tunnel), and delivers it on reconnection."""
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    agent.start()
    try:
        wait_link(agent)
        assert agent.ask("sim_press", name="driver")[-1]["ok"]
        raised = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1, timeout=15))[0]
        agent.kill9()
        dispatch.wait_for(lambda m: any(x.topic.endswith("/status") and x.json()["state"] == "offline" for x in m),
                          timeout=15)  # the last will: the broker saw the vehicle go
        send(other_broker.port, f"patrol/{vehicle}/alert/ack",
             {"alert_id": raised["alert_id"], "action": "acknowledge", "operator": "desk-2"})
        agent.start()
        got = dispatch.wait_for(lambda m: any(a["state"] == "acknowledged" for a in alerts(m)), timeout=20)
        assert agent.ask("alert")[-1]["emergency"]["state"] == "acknowledged"
        states = [m.json()["state"] for m in got if m.topic.endswith("/status")]
        assert states[-2:] == ["offline", "online"], states
        late = Collector(other_broker.port, f"patrol/{vehicle}/status", client_id=f"late-{vehicle}",
                         persistent=False)  # a dispatch desk that starts now: the retained status
        try:
            retained = late.wait_for(lambda m: len(m) >= 1, timeout=10)
        finally:
            late.close()
        assert retained[0].retain and retained[0].json()["state"] == "online"
    finally:
        agent.kill9()
    acknowledged = [a for a in alerts(got) if a["state"] == "acknowledged"]
    assert acknowledged[0]["alert_id"] == raised["alert_id"] and "desk-2" in acknowledged[0]["note"]



def test_a_broker_restart_loses_no_alert_and_the_link_comes_back_on_3_1_1(
        tmp_path: Path, other_broker: Any, vehicle: str, dispatch: Collector, gnss: PtyGnss) -> None:
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    feeder = GnssFeeder(gnss, rate_hz=5).start()
    agent.start()
    accepted: list[str] = []
    try:
        before = wait_link(agent)
        dispatch.wait_for(lambda m: len(positions(m)) >= 3, timeout=20)
        other_broker.stop()  # SIGTERM: a clean restart, as after an upgrade
        accept_test_alarm(agent, accepted)
        other_broker.start()
        dispatch.connected.wait(30)
        got = dispatch.wait_for(lambda m: set(accepted) <= alert_ids(m), timeout=60)
        after = wait_link(agent)
    finally:
        feeder.stop()
        agent.kill9()
    assert len(accepted) == 1 and set(accepted) <= alert_ids(got)
    assert after["protocol"] == "3.1.1" and after["reconnects"] > before["reconnects"]



def test_doctor_shows_the_version_in_use_with_and_without_the_daemon(
        tmp_path: Path, other_broker: Any, vehicle: str, gnss: PtyGnss) -> None:
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    name = f"broker 127.0.0.1:{other_broker.port} MQTT"

    def mqtt_check() -> Check:
        report = Report()
        check_link(report, load(agent.config_path))  # doctor's broker step
        return next(c for c in report.checks if c.name == name)

    alone = mqtt_check()  # the daemon is not running: doctor connects itself
    agent.start()
    try:
        before = wait_link(agent)
        beside = mqtt_check()  # the daemon runs: doctor asks it
        time.sleep(0.5)  # a connection taken over would show by now
        after = wait_link(agent)
    finally:
        agent.kill9()
    assert alone.result == "PASS" and "authenticated over MQTT 3.1.1" in alone.detail, alone
    assert "it refuses MQTT 5" in alone.detail
    assert beside.result == "PASS" and "connected over MQTT 3.1.1" in beside.detail, beside
    assert after["reconnects"] == before["reconnects"] and after["connected_for_s"] > before["connected_for_s"]


def test_mqtt_5_pinned_against_a_broker_that_refuses_it_is_a_fault_that_names_the_cause(
        tmp_path: Path, other_broker: Any, vehicle: str, gnss: PtyGnss) -> None:
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle, protocol="5"))
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            status = agent.ask("status")[-1]["status"]
            if "protocol_refused" in status["faults_detail"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        agent.kill9()
    assert not status["link"]["connected"]
    detail = status["faults_detail"].get("protocol_refused")
    assert detail is not None, f"faults {status['faults_detail']}, last error {status['link']['last_error']}"
    assert "MQTT 5" in detail and f"127.0.0.1:{other_broker.port}" in detail
    assert "mqtt.protocol" in detail  # what to change
    assert "protocol_refused" in status["faults"]


def test_a_vehicle_id_that_nats_refuses_is_a_fault_naming_the_cause(
        tmp_path: Path, other_broker: Any, gnss: PtyGnss) -> None:
    """NATS 2.9 refuses ' ' and '.' in MQTT topics (vehicle ids may have '.'): it closes the connection on
    a CONNECT whose last will is on such a topic, without a CONNACK. The vehicle must say so, not only
    retry ("connection lost") forever."""
    if other_broker.name != "nats":
        pytest.skip("RabbitMQ takes topics with '.' (and rewrites '.' as '/' on the way to subscribers)")
    vehicle = f"PV.DOT.{next(_vehicles)}"
    agent = AgentProcess(tmp_path, default_config(tmp_path, other_broker.port, gnss.path, vehicle))
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            status = agent.ask("status")[-1]["status"]
            if "broker_refused" in status["faults_detail"] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        agent.kill9()
    detail = status["faults_detail"].get("broker_refused", "")
    assert "closes the connection on each CONNECT without answering, with MQTT 3.1.1" in detail, status
    assert "(it refuses MQTT 5)" in detail and "NATS refuses '.' in topics" in detail
    assert not status["link"]["connected"]
