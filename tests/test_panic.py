"""Panic alerts end to end: MockFactory pins, a real mosquitto, the officer's LED."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory, MockPin
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.mqtt import Collector, Received
from tests.support.pty_gnss import PtyGnss

LED_PIN = 22


def alerts(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith("/alert")]


def events(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith("/event")]


def dispatch_send(port: int, topic: str, payload: dict[str, Any]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-dispatch-ack")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def led_samples(factory: MockFactory, seconds: float) -> list[bool]:
    pin = factory.pin(LED_PIN)
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(bool(pin.state))
        time.sleep(0.01)
    return samples



@pytest.fixture
def fixes(gnss_pty: PtyGnss) -> Iterator[GnssFeeder]:
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    yield feeder
    feeder.stop()


def config(tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, **overrides: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"reporting__moving_interval_s": 60, "reporting__stopped_interval_s": 60,
                                "panic__republish_s": 60}
    return agent_config(tmp_path, broker.port, gnss_pty.path, **{**defaults, **overrides})


def wait_live_fix(agent: RunningAgent) -> None:
    deadline = time.monotonic() + 5
    while agent.on_core(lambda: agent.agent.positioning.last_position_fix) is None:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "no fix reached the agent"
        time.sleep(0.05)


def test_press_gives_an_alert_at_the_broker_with_a_position(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, fixes: GnssFeeder, dispatch: Collector,
        mock_factory: MockFactory) -> None:
    with RunningAgent(config(tmp_path, broker, gnss_pty), mock_factory) as agent:
        wait_live_fix(agent)
        agent.press()
        got = dispatch.wait_for(lambda m: len(alerts(m)) >= 1)
    alert = alerts(got)[0]
    assert alert["state"] == "raised" and alert["trigger"] == "driver" and alert["test"] is False
    assert alert["position"]["source"] == "live"
    assert alert["position"]["fix"]["lat"] == pytest.approx(42.6977, abs=0.01)


def test_bouncing_contacts_give_one_alert(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    with RunningAgent(config(tmp_path, broker, gnss_pty), mock_factory) as agent:
        for _ in range(6):  # a 12 ms burst of chatter, then held
            agent.press()
            time.sleep(0.001)
            agent.release()
            time.sleep(0.001)
        agent.press()
        dispatch.wait_for(lambda m: len(alerts(m)) >= 1)
        time.sleep(1.0)
        agent.release()
        time.sleep(0.3)
    raised = {a["alert_id"] for a in alerts(dispatch.messages)}
    assert len(raised) == 1
    assert [a["attempt"] for a in alerts(dispatch.messages)] == [1]


def test_hold_rule_short_press_raises_nothing_long_press_raises_one(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    cfg = config(tmp_path, broker, gnss_pty)
    cfg["inputs"]["panic_buttons"][0].update(trigger="hold", hold_s=0.6)
    with RunningAgent(cfg, mock_factory) as agent:
        agent.press()
        time.sleep(0.3)
        agent.release()
        time.sleep(1.0)
        assert alerts(dispatch.messages) == [], "a 0.3 s press must not raise a hold-to-alarm"
        pressed = time.monotonic()
        agent.press()
        got = dispatch.wait_for(lambda m: len(alerts(m)) >= 1, timeout=5)
        held_for = time.monotonic() - pressed
        agent.release()
    assert held_for >= 0.6
    assert len({a["alert_id"] for a in alerts(got)}) == 1


class HeldLowPin(MockPin):  # type: ignore[misc]
    """A contact already closed when the unit powers up: enabling the pull-up cannot lift it."""

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        self.drive_low()


def stuck_faults(messages: list[Received]) -> list[str]:
    return [e["name"] for e in events(messages) if e["event"] == "fault" and e["name"].startswith("stuck")]


@pytest.mark.parametrize("when", ["at boot", "after start"])
def test_stuck_button_gives_one_alert_and_a_fault(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, fixes: GnssFeeder, dispatch: Collector,
        mock_factory: MockFactory, when: str) -> None:
    cfg = config(tmp_path, broker, gnss_pty)
    cfg["inputs"]["panic_buttons"][0].update(stuck_after_s=0.8)
    if when == "at boot":
        mock_factory.pin(17, pin_class=HeldLowPin)
    with RunningAgent(cfg, mock_factory) as agent:
        if when == "after start":
            agent.press()
        dispatch.wait_for(lambda m: bool(stuck_faults(m)), timeout=5)
        time.sleep(2.0)  # held on: no flood of alerts, no second fault
        assert agent.on_core(lambda: dict(agent.agent.faults.open)).keys() >= {"stuck_input:driver"}  # type: ignore[union-attr]
    assert stuck_faults(dispatch.messages) == ["stuck_input:driver"]
    assert len({a["alert_id"] for a in alerts(dispatch.messages)}) == 1
    assert len(alerts(dispatch.messages)) == 1


def test_acknowledgement_changes_the_led(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    with RunningAgent(config(tmp_path, broker, gnss_pty), mock_factory) as agent:
        assert not any(led_samples(mock_factory, 0.2)), "the LED is dark before any alert"
        agent.press()
        alert = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1))[0]
        before = led_samples(mock_factory, 1.2)
        dispatch_send(broker.port, "patrol/PV-TEST-1/alert/ack",
                      {"alert_id": alert["alert_id"], "action": "acknowledge", "operator": "desk-1"})
        dispatch.wait_for(lambda m: any(a["state"] == "acknowledged" for a in alerts(m)))
        time.sleep(0.1)
        after = led_samples(mock_factory, 0.8)
        assert agent.on_core(lambda: agent.agent.feedback.state) == "acknowledged"  # type: ignore[union-attr]
    assert True in before and False in before, "before the acknowledgement the LED blinks"
    assert all(after), "acknowledged: steady light"


def test_without_acknowledgement_the_alert_is_published_again_with_the_same_id(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    with RunningAgent(config(tmp_path, broker, gnss_pty, panic__republish_s=0.4), mock_factory) as agent:
        agent.press()
        got = dispatch.wait_for(lambda m: len(alerts(m)) >= 3, timeout=5)
        agent.release()
    sent = alerts(got)
    assert len({a["alert_id"] for a in sent}) == 1
    assert [a["attempt"] for a in sent[:3]] == [1, 2, 3]
    assert len({a["seq"] for a in sent}) == len(sent)  # each publication is a message of its own


def test_covert_mode_never_touches_the_outputs(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    cfg = config(tmp_path, broker, gnss_pty, outputs__covert=True, panic__republish_s=0.3)
    cfg["outputs"]["buzzer"] = {"pin": 23}
    with RunningAgent(cfg, mock_factory) as agent:
        agent.press()
        alert = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 2, timeout=5))[0]
        dispatch_send(broker.port, "patrol/PV-TEST-1/alert/ack",
                      {"alert_id": alert["alert_id"], "action": "acknowledge"})
        dispatch.wait_for(lambda m: any(a["state"] == "acknowledged" for a in alerts(m)))
        agent.release()
    assert alert["covert"] is True
    for number in (LED_PIN, 23):
        pin = mock_factory.pins.get(number)
        assert pin is None or [s.state for s in pin.states] in ([], [False]), f"pin {number} was touched"


def test_a_cancellation_is_reported(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, mock_factory: MockFactory) -> None:
    cfg = config(tmp_path, broker, gnss_pty)
    cfg["inputs"]["cancel"] = {"presses": 3, "within_s": 3, "short_s": 0.5, "not_before_s": 0.5}
    with RunningAgent(cfg, mock_factory) as agent:
        agent.press()
        dispatch.wait_for(lambda m: len(alerts(m)) >= 1)
        agent.release()
        time.sleep(0.7)
        for _ in range(3):
            agent.press()
            time.sleep(0.12)
            agent.release()
            time.sleep(0.12)
        got = dispatch.wait_for(lambda m: any(a["state"] == "cancelled" for a in alerts(m)), timeout=5)
        assert agent.on_core(lambda: agent.agent.alerts.emergency) is None  # type: ignore[union-attr]
    cancelled = [a for a in alerts(got) if a["state"] == "cancelled"]
    assert cancelled[0]["note"] == "cancelled by the officer at the driver button"
    assert cancelled[0]["alert_id"] == alerts(got)[0]["alert_id"]


def test_kill_9_during_an_emergency_resumes_it_with_high_rate_reporting(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, fixes: GnssFeeder, dispatch: Collector) -> None:
    cfg = config(tmp_path, broker, gnss_pty)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        assert agent.ask("sim_press", name="driver")[-1]["ok"]
        alert = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1))[0]
        dispatch.wait_for(lambda m: sum(1 for p in positions(m) if p["alert_id"]) >= 2)
        agent.kill9()
        killed = time.monotonic()
        agent.start()
        state = agent.ask("alert")[-1]
        assert state["emergency"]["alert_id"] == alert["alert_id"]
        dispatch.wait_for(lambda m: sum(1 for x in m if x.at > killed and x.topic.endswith("/position")) >= 6,
                          timeout=10)
    finally:
        agent.kill9()
    after = [m for m in dispatch.messages if m.at > killed and m.topic.endswith("/position")]
    tagged = [m.json() for m in after if m.json()["alert_id"] == alert["alert_id"]]
    assert len(tagged) >= 6
    span = after[5].at - after[0].at
    assert span < 5 * 0.5 * 2, f"emergency rate not resumed: 6 positions over {span:.1f} s"


def test_test_alarm_is_flagged_as_a_test_end_to_end(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    agent = AgentProcess(tmp_path, config(tmp_path, broker, gnss_pty))
    agent.start()
    watcher = subprocess.Popen([sys.executable, "-m", "agent.cli", "watch", "--broker",
                                f"mqtt://127.0.0.1:{broker.port}", "--auto-ack", "--client-id", "auto-ack"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        done = subprocess.run([sys.executable, "-m", "agent.cli", "panic", "test", "--runtime-dir",
                               str(agent.runtime_dir), "--timeout", "15"],
                              cwd=ROOT, capture_output=True, text=True, timeout=30)
        state = agent.ask("alert")[-1]
    finally:
        watcher.kill()
        agent.kill9()
    assert done.returncode == 0, done.stdout + done.stderr
    stages = [line.split()[2] for line in done.stdout.splitlines() if "test alarm" in line]
    assert stages == ["accepted", "delivered", "acknowledged"]
    sent = alerts(dispatch.messages)
    assert sent and all(a["test"] is True for a in sent)
    assert state["emergency"] is None, "a test alarm must not start an emergency"
    assert not any(p["alert_id"] for p in positions(dispatch.messages))


def test_with_the_broker_down_an_alert_is_fsynced_at_once_and_published_first(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, fixes: GnssFeeder, dispatch: Collector) -> None:
    cfg = config(tmp_path, broker, gnss_pty, reporting__moving_interval_s=0.05, reporting__stopped_interval_s=0.05)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 3)
        broker.stop()
        time.sleep(1.5)  # a backlog of positions builds up
        accepted = agent.first_reply("panic_test")
        assert accepted["stage"] == "accepted"
        with sqlite3.connect(tmp_path / "state" / "outbox-alerts.sqlite") as db:  # a second reader, as after a crash
            row_id = accepted["boot"] << 32 | accepted["seq"]  # an outbox row's id: boot << 32 | seq
            rows = db.execute("SELECT priority FROM outbox WHERE id = ?", (row_id,)).fetchall()
        assert rows == [(0,)], "accepted means on disk"
        time.sleep(1.5)
        restarted = time.monotonic()
        broker.start()
        dispatch.wait_for(lambda m: any(a["alert_id"] == accepted["alert_id"] for a in alerts(m)), timeout=15)
        time.sleep(1.0)
    finally:
        agent.kill9()
    # The broker's own persisted queue may still deliver live messages from before the outage; what the
    # agent published after reconnecting is the rest: the backlog (historical), the alert, newer messages.
    after = [m.json() for m in dispatch.messages if m.at > restarted and not m.retain and m.topic.endswith(
        ("/alert", "/position", "/event", "/reply", "/health"))]  # the status is state, not stream: no seq
    republished = [m for m in after if m["historical"] or m["seq"] >= accepted["seq"]]
    first = republished[0]
    assert first["kind"] == "alert" and first["alert_id"] == accepted["alert_id"], first
    assert any(m["historical"] for m in republished), "a backlog built up and followed the alert"
