"""An alert changes the reconnect policy: it never sits out a back-off built up in a tunnel.

The policy alone (seeded randomness, no sleeping), then the real unit
in-process against a real mosquitto that is down for the whole back-off.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from agent.config import MqttConfig
from agent.link_policy import LinkPolicy
from tests.support.agent_proc import GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss


def policy(**changes: object) -> LinkPolicy:
    cfg = MqttConfig.model_validate({"brokers": ["mqtts://a.example:8883", "mqtts://b.example:8883"], **changes})
    return LinkPolicy(cfg, random.Random(7), time.monotonic)


def fail(p: LinkPolicy, times: int) -> None:
    for _ in range(times):
        broker, _ = p.next_attempt()
        p.attempt_ended(broker, reached=False, was_up=False, lasted=0.0, refused=None, taken_over=False)


def test_telemetry_alone_backs_off_with_jitter_up_to_the_cap() -> None:
    p = policy(backoff_initial_s=1.0, backoff_max_s=30.0)
    fail(p, 10)
    delays = [p.delay(0.0) for _ in range(200)]
    assert max(delays) <= 30.0 and max(delays) > 20.0, "full jitter under the cap"
    assert min(delays) < 10.0


def test_an_alert_means_try_at_once_then_at_the_short_interval_whatever_the_backoff_reached() -> None:
    p = policy(backoff_initial_s=1.0, backoff_max_s=60.0, alert_retry_s=2.0)
    fail(p, 12)
    assert p.set_urgent(True) is True, "raised: try at once"
    assert p.set_urgent(True) is False, "once"
    assert all(p.delay(0.0) <= 2.0 for _ in range(200))
    p.set_urgent(False)
    assert max(p.delay(0.0) for _ in range(200)) > 2.0, "delivered: telemetry keeps its back-off"


def test_an_alert_raised_during_a_long_backoff_reaches_dispatch_within_seconds_of_the_broker_returning(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, mock_factory: MockFactory) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=1,
                       reporting__stopped_interval_s=1)
    # a back-off that has reached 10 minutes (as after a long outage): the next try 0-600 s away
    cfg["mqtt"].update(backoff_initial_s=600.0, backoff_max_s=600.0, alert_retry_s=1.0)
    dispatch = Collector(broker.port, "patrol/#", client_id="reconnect-dispatch")
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        with RunningAgent(cfg, mock_factory) as running:
            dispatch.wait_for(lambda m: len(positions(m)) >= 2)
            broker.stop()
            time.sleep(6)  # the link notices, backs off; positions pile up in the outbox
            alerts = running.agent.alerts
            assert alerts is not None
            alert_id = running.on_core(lambda: alerts.raise_alert("driver")).alert_id
            time.sleep(2)
            broker.start()
            back = time.monotonic()
            got = dispatch.wait_for(lambda m: any(x.topic.endswith("/alert") and alert_id in x.payload.decode()
                                                  for x in m), timeout=15)
            arrived = next(x.at for x in got if x.topic.endswith("/alert") and alert_id in x.payload.decode())
            dispatch.wait_quiet(1.0)
    finally:
        feeder.stop()
        dispatch.close()
    # how soon: benchmarks/outage_alert.py; here, that it comes at all while the back-off is at 0-600 s
    assert arrived >= back
    after = [x for x in dispatch.messages if x.at >= back]
    first_backlog = next(i for i, x in enumerate(after) if x.topic.endswith("/position") and x.json()["historical"])
    alert_at = next(i for i, x in enumerate(after) if x.topic.endswith("/alert"))
    assert alert_at < first_backlog, "the alert before the backlog"


def test_another_client_taking_the_vehicles_session_is_a_fault(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    """A broker that does not bind client ids to identities (not the reference one): another client
    connecting with the vehicle's id closes its session; MQTT 5 says so, and it is a fault."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.support.agent_proc import AgentProcess

    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    try:
        deadline = time.monotonic() + 10
        while not agent.ask("status")[-1]["status"]["link"]["connected"]:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="PV-TEST-1", protocol=mqtt.MQTTv5)
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop_start()
        deadline = time.monotonic() + 10
        faults: dict[str, str] = {}
        while "session_taken_over" not in faults and time.monotonic() < deadline:
            time.sleep(0.2)
            faults = agent.ask("status")[-1]["status"]["faults_detail"]
        intruder.loop_stop()
        intruder.disconnect()
        assert "session_taken_over" in faults, faults
        assert "another client" in faults["session_taken_over"]
    finally:
        agent.kill9()
