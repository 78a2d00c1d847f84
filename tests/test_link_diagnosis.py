"""The link's faults say why: a CA that does not match after a rotation, an alert the broker's ACL refuses.

A real daemon over TLS, a real mosquitto with client certificates. FAULTS.md: "credentials rotated or
unreadable: a fault naming the cause, retry with backoff, back without a restart".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agent_proc import AgentProcess, agent_config
from tests.support.broker import Mosquitto, free_port, tls_listener
from tests.support.pty_gnss import PtyGnss

VEHICLE = "PV-TEST-1"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    from tools.make_certs import issue, make_ca

    out = tmp_path / "pki"
    ca = make_ca(out)
    issue(out, "broker", "localhost", ca, server_hosts=["localhost", "127.0.0.1"])
    issue(out, VEHICLE, VEHICLE, ca)
    make_ca(out, name="otherca", cn="another CA")
    return out


def status(agent: AgentProcess) -> dict[str, Any]:
    return agent.ask("status")[-1]["status"]  # type: ignore[no-any-return]


def tls_agent(tmp_path: Path, port: int, pki: Path, gnss: PtyGnss, **over: Any) -> AgentProcess:
    cfg = agent_config(tmp_path, port, gnss.path, **over)
    cfg["mqtt"].update(brokers=[f"mqtts://localhost:{port}"], lab_mode=False,
                       tls={"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / f"{VEHICLE}.crt"),
                            "key_file": str(pki / f"{VEHICLE}.key")})
    return AgentProcess(tmp_path, cfg)


def until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_a_ca_swapped_for_the_wrong_one_is_a_fault(tmp_path: Path, pki: Path, gnss_pty: PtyGnss) -> None:
    port = free_port()
    broker = Mosquitto(tmp_path / "b", port=port, extra_conf=tls_listener(port, pki))
    broker.start()
    agent = tls_agent(tmp_path, port, pki, gnss_pty)
    vehicle_ca = tmp_path / "vehicle-ca.crt"  # the vehicle's copy of the CA, not the broker's
    vehicle_ca.write_bytes((pki / "ca.crt").read_bytes())
    agent.cfg["mqtt"]["tls"]["ca_file"] = str(vehicle_ca)
    agent.config_path.write_text(yaml.safe_dump(agent.cfg))
    agent.start()
    try:
        assert until(lambda: status(agent)["link"]["connected"], 15)
        good = vehicle_ca.read_bytes()
        vehicle_ca.write_bytes((pki / "otherca.crt").read_bytes())  # a CA rotation gone wrong
        broker.restart()
        assert until(lambda: "tls_failed" in status(agent)["faults_detail"], 10), "no fault says why"
        assert "ca_file" in status(agent)["faults_detail"]["tls_failed"]
        vehicle_ca.write_bytes(good)
        assert until(lambda: status(agent)["link"]["connected"], 30), "back once the right CA returns"
        assert "tls_failed" not in status(agent)["faults_detail"]
    finally:
        agent.kill9()
        broker.kill()


def test_a_refused_alert_publish(tmp_path: Path, pki: Path, gnss_pty: PtyGnss) -> None:
    """The broker's ACL refuses the vehicle's alert topic (a broker config error): what does the LED say?"""
    port = free_port()
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite patrol/%u/position\npattern readwrite patrol/%u/status\n"
                   "pattern readwrite patrol/%u/event\npattern readwrite patrol/%u/health\n"
                   "pattern readwrite patrol/%u/reply\npattern read patrol/%u/cmd\npattern read patrol/%u/alert/ack\n")
    broker = Mosquitto(tmp_path / "b", port=port, extra_conf=tls_listener(port, pki, acl=acl))
    broker.start()
    agent = tls_agent(tmp_path, port, pki, gnss_pty)
    agent.start()
    try:
        assert until(lambda: status(agent)["link"]["connected"], 15)
        assert agent.ask("sim_press", name="driver", hold=0.3)[-1]["ok"]
        time.sleep(8)  # the refusal, and the republishing that follows
        alert = agent.ask("alert")[-1]
        st = status(agent)
        assert alert.get("feedback") == "raised", "the LED never says delivered for a refused alert"
        assert "publish_refused" in st["faults_detail"], st["faults_detail"]
        assert "session_taken_over" not in st["faults_detail"], "a refusal is not a takeover"
    finally:
        agent.kill9()
        broker.kill()


def test_an_oversized_command_over_mqtt_3_1_1_is_never_read_into_memory(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    """MQTT 3.1.1 cannot tell the broker a maximum packet size (the fallback for NATS and RabbitMQ), and a
    broker without max_packet_size forwards anything: a 50 MB command is dropped from its header on, a
    fault says so, and the link comes back."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.test_broker_reference import memory_kb

    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path, mqtt__protocol="3.1.1"))
    agent.start()
    try:
        assert until(lambda: status(agent)["link"]["connected"], 15)
        time.sleep(1.0)
        assert agent.proc is not None
        before = memory_kb(agent.proc.pid)
        sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="big-sender")
        sender.connect("127.0.0.1", broker.port)
        sender.loop_start()
        sender.publish(f"patrol/{VEHICLE}/cmd", b"x" * (50 * 1024 * 1024), qos=0).wait_for_publish(30)
        sender.loop_stop()
        sender.disconnect()
        assert until(lambda: "inbound_too_large" in status(agent)["faults_detail"], 20), status(agent)["faults"]
        after = memory_kb(agent.proc.pid)
        assert until(lambda: status(agent)["link"]["connected"], 15), "the link comes back"
        detail = status(agent)["faults_detail"]["inbound_too_large"]
    finally:
        agent.kill9()
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mb < 5, f"the daemon's peak RSS grew by {grown_mb:.1f} MB for a 50 MB command"
    assert "52,428,8" in detail, detail
