"""The link policy's decisions (agent/link_policy.py), attempt by attempt: which MQTT version next, how
long to wait, and which fault names the cause. What real brokers do is in test_interop.py (NATS refuses
MQTT 5 in its CONNACK; RabbitMQ 3.10 closes the connection without one); here each of their answers is
played to the policy, with a random source that always draws the longest wait."""

from __future__ import annotations

import random
from typing import Any

from agent.config import MqttConfig
from agent.link_policy import LinkPolicy, Verdict

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


def test_auto_falls_back_at_once_when_the_broker_hangs_up_on_mqtt_5() -> None:
    link = policy()
    version, verdict, wait = attempt(link, closed=True)  # RabbitMQ 3.10: no CONNACK, the socket closed
    assert (version, verdict.fallback, wait) == ("5", "3.1.1", 0.0)
    assert link.next_attempt()[1] == "3.1.1"


def test_auto_after_a_connack_timeout_tries_the_other_version_after_the_usual_wait() -> None:
    link = policy()
    version, verdict, wait = attempt(link)  # reached, no CONNACK within connect_timeout_s, not closed
    assert (version, verdict.fallback, wait) == ("5", None, 2.0)
    assert link.next_attempt()[1] == "3.1.1"


def test_a_learnt_version_is_kept_through_ordinary_failures_and_learnt_again_when_refused() -> None:
    link = policy()
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
    for _ in range(4):
        version, verdict, _ = attempt(link, closed=True)
        seen.append((version, codes(verdict)))
    assert seen == [("5", []), ("3.1.1", []), ("5", []), ("3.1.1", ["broker_refused"])]
    assert "with MQTT 5 and 3.1.1 alike, 4 times running" in verdict.faults[0][1]


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
