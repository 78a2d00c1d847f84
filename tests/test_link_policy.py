"""The link policy's decisions (agent/link_policy.py), attempt by attempt: which MQTT version next, how
long to wait, and which fault names the cause. What real brokers do is in test_interop.py (NATS refuses
MQTT 5 in its CONNACK; RabbitMQ 3.10 closes the connection without one); here each of their answers is
played to the policy, with a random source that always draws the longest wait."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import MqttConfig
from agent.link_policy import LinkPolicy, Verdict
from agent.uplink_client import MEMORY_DAYS, VersionMemory

URL = "mqtt://127.0.0.1:1883"
NATS_REFUSAL = "broker refused the connection: Unsupported protocol version"


class Longest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


def policy(**settings: Any) -> LinkPolicy:
    return LinkPolicy(MqttConfig.model_validate({"brokers": [URL], **settings}), Longest(), lambda: 0.0)


def attempt(link: LinkPolicy, *, refused: str | None = None, closed: bool = False, reached: bool = True,
            up_for: float | None = None) -> tuple[str, Verdict, float]:
    """One attempt with the version the policy chose; returns (that version, the verdict, the wait after)."""
    broker, version = link.next_attempt()
    if up_for is not None:
        link.connected(broker, version)
    verdict = link.attempt_ended(broker, reached=reached, was_up=up_for is not None, lasted=up_for or 0.0,
                                 refused=refused, taken_over=False, closed=closed)
    return version, verdict, link.delay(up_for or 0.0)


def codes(verdict: Verdict) -> list[str]:
    return [code for code, _ in verdict.faults]


def test_auto_falls_back_to_3_1_1_at_once_when_the_connack_refuses_mqtt_5() -> None:
    link = policy()
    version, verdict, wait = attempt(link, refused=NATS_REFUSAL)
    assert (version, verdict.fallback, wait, codes(verdict)) == ("5", "3.1.1", 0.0, [])
    version, _, wait = attempt(link, reached=False)  # then the broker cannot be reached
    assert version == "3.1.1" and wait == 2.0, "the refusal was not counted as a failure: 1 s x 2**1"
    attempt(link, up_for=600)  # 3.1.1 works, for long
    version, _, _ = attempt(link, reached=False)
    assert version == "3.1.1" and link.next_attempt()[1] == "3.1.1", "the version that worked is kept"


def test_auto_falls_back_at_once_when_the_broker_hangs_up_on_mqtt_5_twice_running() -> None:
    link = policy()
    version, verdict, wait = attempt(link, closed=True)  # RabbitMQ 3.10: no CONNACK, the socket closed
    assert (version, verdict.fallback, wait) == ("5", None, 0.0), "once may be the link: 5 again, at once"
    version, verdict, wait = attempt(link, closed=True)
    assert (version, verdict.fallback, wait) == ("5", "3.1.1", 0.0)
    assert link.next_attempt()[1] == "3.1.1"


def test_a_single_hang_up_on_mqtt_5_does_not_make_a_broker_3_1_1() -> None:
    link = policy()
    attempt(link, closed=True)  # a cellular drop just as the CONNECT went out
    assert attempt(link, up_for=600)[0] == "5"
    assert link.learned() == {URL: "5"}


def test_auto_after_connack_timeouts_keeps_mqtt_5() -> None:
    """No CONNACK in time (a weak cell at boot, a half-open link) says nothing about the version: falling
    back on it would keep the unit on 3.1.1 (no reason codes, no packet-size limit) once the link heals."""
    link = policy()
    for _ in range(5):
        version, verdict, _ = attempt(link)  # reached, no CONNACK within connect_timeout_s, not closed
        assert (version, verdict.fallback) == ("5", None)
    assert link.next_attempt()[1] == "5"


def test_a_learnt_version_is_kept_through_ordinary_failures_and_learnt_again_when_refused() -> None:
    link = policy()
    attempt(link, closed=True)
    attempt(link, closed=True)
    attempt(link, up_for=600)
    for _ in range(3):
        version, verdict, _ = attempt(link)  # timeouts: nothing to do with the version
        assert version == "3.1.1" and verdict.faults == []
    attempt(link, up_for=600)
    version, verdict, _ = attempt(link, refused="broker refused the connection: Unsupported protocol version")
    assert version == "3.1.1" and codes(verdict) == []  # an upgrade or a fail-over to a broker without 3.1.1
    assert link.next_attempt()[1] == "5"


def test_pinned_5_refused_in_the_connack_is_a_protocol_refused_fault_at_once() -> None:
    link = policy(protocol="5")
    version, verdict, wait = attempt(link, refused=NATS_REFUSAL)
    assert version == "5" and verdict.fallback is None and wait > 0
    (code, detail), = verdict.faults
    assert code == "protocol_refused" and "refuses MQTT 5" in detail and "mqtt.protocol: auto" in detail


def test_pinned_5_closed_without_an_answer_twice_running_is_a_protocol_refused_fault() -> None:
    link = policy(protocol="5")
    _, first, _ = attempt(link, closed=True)
    assert first.faults == [], "one closed connection may be a broker's hiccup"
    _, second, _ = attempt(link, closed=True)
    (code, detail), = second.faults
    assert code == "protocol_refused" and "without answering (2 times running)" in detail
    assert "does not speak MQTT 5" in detail and "mqtt.protocol: auto" in detail
    _, verdict, _ = attempt(link, up_for=1.0)
    assert "protocol_refused" in verdict.cleared


def test_auto_with_both_versions_closed_unanswered_is_a_broker_refused_fault() -> None:
    link = policy()
    seen = []
    for _ in range(5):
        version, verdict, _ = attempt(link, closed=True)
        seen.append((version, codes(verdict)))
    assert seen == [("5", []), ("5", []), ("3.1.1", []), ("5", []), ("3.1.1", ["broker_refused"])]
    assert "with MQTT 5 and 3.1.1 alike, 5 times running" in verdict.faults[0][1]


def test_auto_after_mqtt_5_was_refused_3_1_1_closed_twice_is_a_fault_and_5_is_not_tried_again() -> None:
    """NATS with a vehicle id that has a '.': MQTT 5 refused in the CONNACK, 3.1.1 closed unanswered."""
    link = policy()
    assert attempt(link, refused=NATS_REFUSAL)[0] == "5"
    version, first, _ = attempt(link, closed=True)
    assert version == "3.1.1" and first.faults == []
    version, second, _ = attempt(link, closed=True)
    assert version == "3.1.1"
    (code, detail), = second.faults
    assert code == "broker_refused" and "with MQTT 3.1.1 (it refuses MQTT 5), 2 times running" in detail
    assert "NATS refuses '.' in topics" in detail
    assert link.next_attempt()[1] == "3.1.1"


def test_a_refused_connect_for_another_reason_keeps_the_version_and_names_the_reason() -> None:
    link = policy()
    version, verdict, _ = attempt(link, refused="broker refused the connection: Not authorized")
    assert version == "5" and codes(verdict) == ["broker_refused"] and "Not authorized" in verdict.faults[0][1]
    assert link.next_attempt()[1] == "5"


# --- the versions remembered across restarts (agent/uplink_client.VersionMemory) ----------------------


def test_a_remembered_version_is_tried_first_under_auto_and_ignored_when_pinned() -> None:
    link = policy()
    link.remember({URL: "3.1.1"})
    assert link.next_attempt()[1] == "3.1.1"
    pinned = policy(protocol="5")
    pinned.remember({URL: "3.1.1"})
    assert pinned.next_attempt()[1] == "5"


def test_a_remembered_version_that_is_refused_is_learnt_again() -> None:
    link = policy()
    link.remember({URL: "3.1.1"})  # the broker has since been replaced by one that speaks only MQTT 5
    attempt(link, refused="broker refused the connection: Unsupported protocol version")
    assert link.next_attempt()[1] == "5" and link.learned() == {}


def test_what_one_run_learnt_the_next_run_tries_first(tmp_path: Path) -> None:
    first = policy()
    attempt(first, refused=NATS_REFUSAL)
    attempt(first, up_for=1)
    VersionMemory(tmp_path / "versions.json").update(first.learned())
    second = policy()  # the unit restarted
    second.remember(VersionMemory(tmp_path / "versions.json").load())
    assert second.next_attempt()[1] == "3.1.1"


def test_the_memory_survives_a_restart_and_forgets_after_a_week(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    now = time.time()
    VersionMemory(path, wall=lambda: now).update({URL: "3.1.1"})
    assert VersionMemory(path, wall=lambda: now + 3600).load() == {URL: "3.1.1"}
    assert VersionMemory(path, wall=lambda: now + MEMORY_DAYS * 86400 + 1).load() == {}, "upgraded since?"


def test_a_confirmed_version_keeps_its_date_and_the_file_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "versions.json"
    now = time.time()
    memory = VersionMemory(path, wall=lambda: now)
    memory.update({URL: "3.1.1"})
    later = VersionMemory(path, wall=lambda: now + 86400)
    later.load()
    later.update({URL: "3.1.1"})  # confirmed at the next connection: nothing to write
    assert json.loads(path.read_text())[URL]["since"] == now


def test_an_unreadable_or_unwritable_memory_costs_a_fallback_and_nothing_else(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    garbage = tmp_path / "versions.json"
    garbage.write_bytes(b"\x00not json")
    assert VersionMemory(garbage).load() == {}
    missing_dir = VersionMemory(tmp_path / "no-such-dir" / "versions.json")
    missing_dir.update({URL: "3.1.1"})  # no exception
    assert "cannot write" in caplog.text and "cannot read" in caplog.text
