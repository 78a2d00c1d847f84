"""Commands that cannot be replayed or post-dated, and a flood that cannot drown the journal.

A real daemon over TLS with its own certificate, the shipped reference
broker config and ACL, and dispatch with its own identity. Every command
is built from the real clock of the run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import AgentProcess
from tests.support.pty_gnss import PtyGnss
from tests.support.reference_broker import ReferenceBroker
from tests.support.tls_client import Client
from tests.test_broker_reference import VICTIM, link, make_certs, vehicle_daemon, wait

TOPIC = f"patrol/{VICTIM}/cmd"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    make_certs("init", str(out), "--broker-host", "localhost", "--vehicle", VICTIM)
    return out


@pytest.fixture
def broker(tmp_path: Path, pki: Path) -> Iterator[ReferenceBroker]:
    server = ReferenceBroker(tmp_path / "broker", pki)
    server.start()
    yield server
    server.kill()


@pytest.fixture
def vehicle(tmp_path: Path, broker: ReferenceBroker, gnss_pty: PtyGnss) -> Iterator[AgentProcess]:
    agent = vehicle_daemon(tmp_path, broker, gnss_pty)
    agent.start()
    wait(lambda: link(agent)["connected"], what="the vehicle online")
    yield agent
    agent.kill9()


@pytest.fixture
def dispatch(broker: ReferenceBroker) -> Iterator[Client]:
    client = Client(broker.port, broker.pki, "dispatch", client_id="dispatch")
    assert client.connect()
    client.client.subscribe(f"patrol/{VICTIM}/#", qos=1)
    time.sleep(0.3)
    yield client
    client.close()


def command(command_id: str, issued: datetime, expires: datetime) -> bytes:
    return json.dumps({"command_id": command_id, "vehicle_id": VICTIM, "verb": "ping", "args": {},
                       "issued_at": issued.isoformat(), "expires_at": expires.isoformat()}).encode()


def replies(dispatch: Client, command_id: str) -> list[dict[str, Any]]:
    found = []
    for topic, payload in list(dispatch.messages):
        if topic.endswith("/reply"):
            body = json.loads(payload)
            if body.get("command_id") == command_id:
                found.append(body)
    return found


def test_future_dated_inverted_and_replayed_commands_are_each_rejected_once_with_a_reason(
        vehicle: AgentProcess, dispatch: Client) -> None:
    now = datetime.now(UTC)
    decades = timedelta(days=30 * 365)  # "valid for an hour", thirty years from now
    dispatch.publish(TOPIC, command("c-future", now + decades, now + decades + timedelta(minutes=59)))
    dispatch.publish(TOPIC, command("c-inverted", now, now - timedelta(minutes=1)))
    replay = command("c-replay", now - timedelta(seconds=2), now + timedelta(minutes=5))
    for _ in range(3):
        dispatch.publish(TOPIC, replay)
    wait(lambda: len(replies(dispatch, "c-replay")) >= 3 and replies(dispatch, "c-future")
         and replies(dispatch, "c-inverted"), what="every command answered")
    time.sleep(0.5)
    future, inverted, replayed = (replies(dispatch, c) for c in ("c-future", "c-inverted", "c-replay"))
    assert len(future) == 1 and not future[0]["ok"] and "future" in future[0]["detail"], future
    assert len(inverted) == 1 and not inverted[0]["ok"] and "before it was issued" in inverted[0]["detail"], inverted
    assert [r["ok"] for r in replayed] == [True, False, False], replayed
    assert all("duplicate" in r["detail"] for r in replayed[1:]), replayed


def test_a_30_second_command_flood_logs_fewer_than_100_lines_and_the_unit_stays_responsive(
        vehicle: AgentProcess, dispatch: Client) -> None:
    before = len(vehicle.log.read_text().splitlines())
    sent, slowest = 0, 0.0
    deadline = time.monotonic() + 30
    next_probe = time.monotonic()
    while time.monotonic() < deadline:
        for _ in range(50):
            dispatch.client.publish(TOPIC, b'{"command_id": "flood", "verb": "reboot"}', qos=0)
            sent += 1
        if time.monotonic() >= next_probe:
            began = time.monotonic()
            assert vehicle.ask("status", timeout=5)[-1]["ok"]
            slowest = max(slowest, time.monotonic() - began)
            next_probe = time.monotonic() + 1.0
        time.sleep(0.005)
    time.sleep(1)
    lines = vehicle.log.read_text().splitlines()[before:]
    assert sent > 10_000, sent
    assert len(lines) < 100, f"{len(lines)} log lines for {sent} rejected commands:\n" + "\n".join(lines[:20])
    assert any("more rejected since the last report" in line for line in lines), "the count of those held back"
    assert vehicle.running
    print(f"{sent} commands in 30 s, {len(lines)} log lines, status answered within {slowest * 1000:.0f} ms")


def test_a_flood_of_valid_commands_is_rate_limited_and_cannot_hold_back_an_alarm(
        vehicle: AgentProcess, dispatch: Client) -> None:
    """A dispatch identity gone wrong sends fresh, well-formed, unique commands as fast as it can:
    only a few a second run (the rest are refused as rate limited, the refusals counted, not logged
    one by one), and a test alarm raised in the middle reaches dispatch while the flood goes on."""
    import threading

    before = len(vehicle.log.read_text().splitlines())
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        while not stop.is_set():
            now = datetime.now(UTC)
            body = json.dumps({"command_id": f"flood-{sent[0]}", "vehicle_id": VICTIM, "verb": "report_position",
                               "args": {}, "issued_at": now.isoformat(),
                               "expires_at": (now + timedelta(minutes=5)).isoformat()}).encode()
            dispatch.client.publish(TOPIC, body, qos=0)
            sent[0] += 1
            if sent[0] % 200 == 0:
                time.sleep(0.01)

    flooder = threading.Thread(target=flood, daemon=True)
    began = time.monotonic()
    flooder.start()
    try:
        time.sleep(5)
        asked = time.monotonic()
        assert vehicle.first_reply("panic_test", timeout=10)["stage"] == "accepted"
        arrived = None
        while time.monotonic() - asked < 30 and arrived is None:
            if any(t.endswith("/alert") for t, _ in list(dispatch.messages)):
                arrived = time.monotonic() - asked
            time.sleep(0.01)
        time.sleep(5)
    finally:
        stop.set()
        flooder.join()
    flooded_s = time.monotonic() - began
    time.sleep(2)
    lines = vehicle.log.read_text().splitlines()[before:]
    answered = [json.loads(p) for t, p in list(dispatch.messages) if t.endswith("/reply")]
    ran = [r for r in answered if r["ok"]]
    print(f"\n{sent[0]} valid commands in {flooded_s:.0f} s: {len(ran)} ran, {len(answered) - len(ran)} refusals "
          f"answered, {len(lines)} log lines; test alarm at dispatch {arrived} s after it was asked for")
    assert sent[0] > 5_000, sent
    assert arrived is not None and arrived < 3.0, "the alarm reaches dispatch during the flood"
    assert len(ran) <= 20 + 5 * (flooded_s + 3), f"{len(ran)} commands ran in {flooded_s:.0f} s"
    assert any("rate limited" in r["detail"] for r in answered if not r["ok"])
    assert len(lines) < 100, f"{len(lines)} log lines:\n" + "\n".join(lines[:20])
    assert vehicle.running
