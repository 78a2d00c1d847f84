"""Remote commands: the allow-list works, and every hostile command is rejected and reported."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from agent.commands import VERBS, CommandRejected, parse
from tests.support.agent_proc import agent_config
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

# built from the clock the daemon under test uses, never from a date written here
NOW = datetime.now(UTC)
TOPIC = "patrol/PV-TEST-1/cmd"


def command(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"command_id": "c-1", "vehicle_id": "PV-TEST-1", "verb": "ping", "args": {},
                            "issued_at": (NOW - timedelta(seconds=5)).isoformat(),
                            "expires_at": (NOW + timedelta(minutes=5)).isoformat()}
    body.update(changes)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = {"x": value}
    return value


HOSTILE = {
    "oversized": raw(command(args={"pad": "x" * 5000})),
    "invalid UTF-8": b'{"command_id": "c-1", "verb": "\xff\xfe"}',
    "not JSON": b"rm -rf / ; reboot",
    "deeply nested": raw(command(args={"a": deep(50)})),
    "nested far too deep": b"[" * 100_000 + b"]" * 100_000,
    "unknown verb": raw(command(verb="shell", args={"cmd": "reboot"})),
    "wrong vehicle": raw(command(vehicle_id="PV-OTHER")),
    "expired": raw(command(expires_at=(NOW - timedelta(seconds=1)).isoformat())),
    "valid for too long": raw(command(expires_at=(NOW + timedelta(days=2)).isoformat())),
    "extra field": raw({**command(), "exec": "/bin/sh"}),
    "bad arguments": raw(command(verb="set_reporting", args={"interval_s": 0.001, "duration_s": 10})),
    "numbers as strings": raw(command(verb="set_reporting", args={"interval_s": "1", "duration_s": "86400"})),
    "a boolean as a number": raw(command(verb="set_reporting", args={"interval_s": True, "duration_s": 60})),
    "duplicate verb": raw(command(verb="reboot"))[:-1] + b', "verb": "ping"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_commands_are_rejected_with_a_reason(name: str) -> None:
    with pytest.raises(CommandRejected) as caught:
        parse(HOSTILE[name], retained=False, vehicle_id="PV-TEST-1", now=NOW)
    assert caught.value.reason


def test_retained_command_is_rejected() -> None:
    with pytest.raises(CommandRejected, match="retained"):
        parse(raw(command()), retained=True, vehicle_id="PV-TEST-1", now=NOW)


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_allowed_verb_parses_with_its_arguments(verb: str) -> None:
    args = {"set_reporting": {"interval_s": 5, "duration_s": 60},
            "ack_alert": {"alert_id": "a-1"}, "clear_alert": {"alert_id": "a-1"}}.get(verb, {})
    parsed, _ = parse(raw(command(verb=verb, args=args)), retained=False, vehicle_id="PV-TEST-1", now=NOW)
    assert parsed.verb == verb


@pytest.fixture
def running(tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, mock_factory: MockFactory) -> Iterator[RunningAgent]:
    with RunningAgent(agent_config(tmp_path, broker.port, gnss_pty.path), mock_factory) as agent:
        yield agent


def send(port: int, payload: bytes, *, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-commander")
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.publish(TOPIC, payload, qos=1, retain=retain).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_over_mqtt_each_rejection_is_reported_and_a_ping_is_answered(
        broker: Mosquitto, running: RunningAgent) -> None:
    collector = Collector(broker.port, "patrol/PV-TEST-1/#", client_id="test-command-watch")
    try:
        # the agent says online once connected and subscribed: commands sent before that would be lost
        collector.wait_for(lambda m: any(x.topic.endswith("/status") and b"online" in x.payload for x in m))
        time.sleep(0.3)
        now = datetime.now(UTC)
        fresh = {"issued_at": (now - timedelta(seconds=1)).isoformat(),
                 "expires_at": (now + timedelta(minutes=1)).isoformat()}
        for name in ("oversized", "not JSON", "invalid UTF-8"):
            send(broker.port, HOSTILE[name])
        # built now, not at import: the suite may reach this test after HOSTILE's commands have expired
        send(broker.port, raw(command(verb="shell", args={"cmd": "reboot"}, **fresh)))
        send(broker.port, raw(command(vehicle_id="PV-OTHER", **fresh)))
        send(broker.port, raw(command(issued_at=(now - timedelta(minutes=2)).isoformat(),
                                      expires_at=(now - timedelta(minutes=1)).isoformat())))
        send(broker.port, raw(command(**fresh)), retain=True)
        send(broker.port, b"", retain=True)  # clear the retained one again
        send(broker.port, raw(command(command_id="c-ping", **fresh)))
        got = collector.wait_for(lambda m: any(x.topic.endswith("/reply") and b"c-ping" in x.payload for x in m))
        got = collector.wait_for(
            lambda m: sum(1 for x in m if x.topic.endswith("/event") and b"command_rejected" in x.payload) >= 7)
    finally:
        collector.close()
    replies = [x.json() for x in got if x.topic.endswith("/reply")]
    ping = next(r for r in replies if r["command_id"] == "c-ping")
    assert ping["ok"] is True and ping["detail"] == "pong"
    rejected = [x.json()["detail"] for x in got if x.topic.endswith("/event") and b"command_rejected" in x.payload]
    for reason in ("too large", "not JSON", "unknown verb", "another vehicle", "expired", "not UTF-8", "retained"):
        assert any(reason in detail for detail in rejected), (reason, rejected)
    assert all(r["ok"] is False for r in replies if r["command_id"] != "c-ping")
    assert running.on_core(lambda: running.agent.core.stopping) is False  # type: ignore[union-attr]  # never died
