"""An alert changes the reconnect policy: it never sits out a back-off built up in a tunnel.

The policy alone (seeded randomness, no sleeping), then the real unit
in-process against a real mosquitto that is down for the whole back-off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from agent.config import MqttConfig
from agent.link_policy import LinkPolicy
from tests.support.agent_proc import GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.mqtt import Collector, Received
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


def test_a_will_belongs_to_its_connection_and_orders_after_that_connections_online_status(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    """Three connections lost without a DISCONNECT (the broker publishes each one's will): ordered by
    (boot, connection), offline after online, the statuses say what is true at every moment, and each
    will is the will of the connection it ended, with a message id of its own."""
    from tests.support.agent_proc import AgentProcess
    from tests.support.proxy import TcpProxy

    proxy = TcpProxy(broker.port)
    cfg = agent_config(tmp_path, proxy.port, gnss_pty.path, mqtt__backoff_initial_s=0.2, mqtt__backoff_max_s=0.5)
    dispatch = Collector(broker.port, "patrol/+/status", client_id="test-status-order")
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        def count(state: str) -> Callable[[list[Received]], int]:
            return lambda m: sum(1 for x in m if x.json()["state"] == state)

        for cut in range(3):
            dispatch.wait_for(lambda m: count("online")(m) > cut, timeout=15)  # noqa: B023 (waited on at once)
            time.sleep(0.3)
            proxy.set_mode("reset")  # the broker sees the connection die: it publishes that connection's will
            dispatch.wait_for(lambda m: count("offline")(m) > cut, timeout=15)  # noqa: B023
        dispatch.wait_for(lambda m: sum(1 for x in m if x.json()["state"] == "online") >= 4, timeout=15)
        time.sleep(0.5)
        statuses = [m.json() for m in dispatch.messages]
        agent.kill9()  # the fourth connection ends too: its will comes
        dispatch.wait_for(lambda m: sum(1 for x in m if x.json()["state"] == "offline") >= 4, timeout=15)
        after_kill = [m.json() for m in dispatch.messages]
    finally:
        agent.kill9()
        proxy.close()
    online = [s for s in statuses if s["state"] == "online"]
    wills = [s for s in statuses if s["state"] == "offline"]
    assert all(s["reason"] == "connection lost" for s in wills)
    assert all(isinstance(s.get("connection"), int) for s in statuses), statuses
    assert [w["connection"] for w in wills] == [o["connection"] for o in online[:3]], (
        "each will names the connection it ended")
    assert len({s["msg_id"] for s in statuses}) == len(statuses), "every status has a message id of its own"
    rank = {"online": 0, "offline": 1}
    latest = max(statuses, key=lambda s: (s["boot"], s["connection"], rank[s["state"]]))
    assert latest["state"] == "online" and latest["connection"] == online[-1]["connection"], (
        "ordered as the API says, the unit is online on its newest connection")
    latest = max(after_kill, key=lambda s: (s["boot"], s["connection"], rank[s["state"]]))
    assert latest["state"] == "offline" and latest["connection"] == online[-1]["connection"], (
        "once that connection is lost too, the unit is offline")
