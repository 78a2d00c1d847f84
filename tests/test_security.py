"""Secure by default, against a real mosquitto with TLS client certificates and the reference ACL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import main as agent_main
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.pty_gnss import PtyGnss
from tests.support.reference_broker import ReferenceBroker
from tests.support.tls_client import Client
from tools.make_certs import issue, make_ca, revoke


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    ca = make_ca(out)
    issue(out, "broker", "localhost", ca, server_hosts=["localhost", "127.0.0.1"])
    for name in ("PV-A", "PV-B", "dispatch"):
        issue(out, name, name, ca)
    issue(out, "PV-EXPIRED", "PV-EXPIRED", ca, expired=True)
    other = make_ca(out, "other-ca", "another CA")
    issue(out, "PV-ROGUE", "PV-A", other)  # claims to be PV-A, signed by someone else
    revoke(out, ca, [])  # an empty CRL to start with
    return out


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Path) -> Iterator[ReferenceBroker]:
    """The shipped reference config and ACL (config/mosquitto/), with this PKI."""
    server = ReferenceBroker(tmp_path / "tls-broker", pki)
    server.start()
    yield server
    server.kill()


def test_vehicle_a_can_neither_publish_to_nor_read_vehicle_b(secure_broker: ReferenceBroker, pki: Path) -> None:
    dispatch, a, b = (Client(secure_broker.port, pki, n) for n in ("dispatch", "PV-A", "PV-B"))
    try:
        assert dispatch.connect() and a.connect() and b.connect()
        dispatch.client.subscribe("patrol/#", qos=1)
        # reading: A asks for B's topics (on 3.1.1 a denied subscription is still "granted")
        a.client.subscribe([("patrol/PV-B/#", 1), ("patrol/#", 1)])
        time.sleep(0.3)
        b.publish("patrol/PV-B/position", b'{"b":1}')
        dispatch.publish("patrol/PV-B/cmd", b'{"for":"B"}')
        dispatch.publish("patrol/PV-A/cmd", b'{"for":"A"}')  # control: A does receive its own
        time.sleep(0.8)
        read_by_a = list(a.messages)
        # writing: A forges B's messages; mosquitto acknowledges, then may drop A's connection
        a.publish("patrol/PV-A/position", b'{"own":1}')  # control: allowed
        for topic in ("patrol/PV-B/position", "patrol/PV-B/alert", "patrol/PV-B/alert/ack", "patrol/PV-B/status"):
            a.publish(topic, b'{"forged":1}')
        time.sleep(1.0)
    finally:
        for client in (dispatch, a, b):
            client.close()
    assert ("patrol/PV-A/cmd", b'{"for":"A"}') in read_by_a, "control: A's subscription works"
    assert not any(topic.startswith("patrol/PV-B/") for topic, _ in read_by_a), read_by_a
    seen_by_dispatch = [topic for topic, _ in dispatch.messages]
    assert "patrol/PV-A/position" in seen_by_dispatch and "patrol/PV-B/position" in seen_by_dispatch
    assert not any(b"forged" in payload for _, payload in dispatch.messages + b.messages)


def test_certificate_from_another_ca_is_refused(secure_broker: ReferenceBroker, pki: Path) -> None:
    rogue = Client(secure_broker.port, pki, "PV-ROGUE")
    try:
        assert not rogue.connect(timeout=3)
    finally:
        rogue.close()


def test_expired_certificate_is_refused(secure_broker: ReferenceBroker, pki: Path) -> None:
    expired = Client(secure_broker.port, pki, "PV-EXPIRED")
    try:
        assert not expired.connect(timeout=3)
    finally:
        expired.close()


def test_the_agent_runs_over_tls_with_its_own_certificate(
        tmp_path: Path, secure_broker: ReferenceBroker, pki: Path, gnss_pty: PtyGnss) -> None:
    dispatch = Client(secure_broker.port, pki, "dispatch")
    assert dispatch.connect()
    dispatch.client.subscribe("patrol/#", qos=1)
    cfg = agent_config(tmp_path, secure_broker.port, gnss_pty.path)
    cfg["vehicle"]["id"] = "PV-A"
    cfg["mqtt"].update(brokers=[f"mqtts://localhost:{secure_broker.port}"], lab_mode=False,
                       tls={"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "PV-A.crt"),
                            "key_file": str(pki / "PV-A.key")})
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        deadline = time.monotonic() + 15
        while not any(t == "patrol/PV-A/position" for t, _ in dispatch.messages) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        feeder.stop()
        agent.kill9()
        dispatch.close()
    assert any(t == "patrol/PV-A/position" for t, _ in dispatch.messages)
    assert any(t == "patrol/PV-A/status" for t, _ in dispatch.messages)


def secure_cfg(tmp_path: Path, pki: Path, **changes: Any) -> Path:
    cfg = agent_config(tmp_path, 8883, tmp_path / "gnss")
    cfg["vehicle"]["id"] = "PV-A"
    cfg["mqtt"].update(brokers=["mqtts://localhost:8883"], lab_mode=False,
                       tls={"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / "PV-A.crt"),
                            "key_file": str(pki / "PV-A.key")})
    for key, value in changes.items():
        if key == "tls":
            cfg["mqtt"]["tls"].update(value)
        else:
            cfg["mqtt"][key] = value
    path = tmp_path / "secure.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(("changes", "expected"), [
    ({"brokers": ["mqtt://localhost:1883"]}, "is plain TCP"),
    ({"tls": {"ca_file": None}}, "mqtt.tls.ca_file: not set"),
    ({"tls": {"cert_file": "PV-B"}}, "issued to 'PV-B', but this vehicle is 'PV-A'"),
    ({"tls": {"key_file": "world-readable"}}, "is readable by others"),
])
def test_insecure_configs_are_refused_unless_lab(
        tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str], changes: dict[str, Any], expected: str) -> None:
    tls = changes.get("tls", {})
    if tls.get("cert_file") == "PV-B":
        tls["cert_file"] = str(pki / "PV-B.crt")
    if tls.get("key_file") == "world-readable":
        (pki / "PV-A.key").chmod(0o644)
        tls["key_file"] = str(pki / "PV-A.key")
    assert agent_main(secure_cfg(tmp_path, pki, **changes)) == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and expected in err, err
