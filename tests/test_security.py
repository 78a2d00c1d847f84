"""Secure by default, against a real mosquitto with TLS client certificates and the reference ACL."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion

from agent.app import main as agent_main
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.broker import Mosquitto, free_port, tls_listener
from tests.support.pty_gnss import PtyGnss
from tools.make_certs import issue, make_ca, revoke

ROOT = Path(__file__).resolve().parent.parent
ACL = ROOT / "config" / "mosquitto" / "acl"


class Client:
    """A TLS MQTT 3.1.1 client with a certificate, recording what it receives."""

    def __init__(self, port: int, pki: Path, name: str, *, ca: str = "ca") -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{name}", protocol=mqtt.MQTTv311)
        ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.crt"))
        ctx.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
        self.client.tls_set_context(ctx)
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set() if not rc.is_failure else None
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_disconnect = lambda c, u, f, rc, p: self.connected.clear()
        self.client.reconnect_delay_set(1, 1)
        self.port = port

    def connect(self, timeout: float = 5.0) -> bool:
        try:
            self.client.connect("localhost", self.port, keepalive=5)
        except (ssl.SSLError, OSError) as exc:
            self.refused = str(exc)
            return False
        self.client.loop_start()
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        """Publish as a misbehaving client would; the broker may drop the connection for a denied
        publish (mosquitto 2.0 does, after acknowledging): paho reconnects, we carry on."""
        self.connected.wait(5)
        with contextlib.suppress(RuntimeError, ValueError):
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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
def secure_broker(tmp_path: Path, pki: Path) -> Iterator[Mosquitto]:
    port = free_port()
    server = Mosquitto(tmp_path / "tls-broker", port=port,
                       extra_conf=tls_listener(port, pki, acl=ACL, crl=pki / "crl.pem"))
    server.start()
    yield server
    server.kill()


def test_vehicle_a_can_neither_publish_to_nor_read_vehicle_b(secure_broker: Mosquitto, pki: Path) -> None:
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


def test_certificate_from_another_ca_is_refused(secure_broker: Mosquitto, pki: Path) -> None:
    rogue = Client(secure_broker.port, pki, "PV-ROGUE")
    try:
        assert not rogue.connect(timeout=3)
    finally:
        rogue.close()


def test_expired_certificate_is_refused(secure_broker: Mosquitto, pki: Path) -> None:
    expired = Client(secure_broker.port, pki, "PV-EXPIRED")
    try:
        assert not expired.connect(timeout=3)
    finally:
        expired.close()


def test_revoked_vehicle_is_cut_off(secure_broker: Mosquitto, pki: Path) -> None:
    a, b = Client(secure_broker.port, pki, "PV-A"), Client(secure_broker.port, pki, "PV-B")
    try:
        assert a.connect() and b.connect()
        ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        revoke(pki, (x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()), ca_key), [pki / "PV-A.crt"])
        assert secure_broker.proc is not None
        os.kill(secure_broker.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        assert a.connected.is_set(), "as documented: a CRL alone leaves the open session connected"
        secure_broker.restart()  # the documented cut-off: every session is closed, only valid ones come back
        time.sleep(3.0)
        assert not a.connected.is_set(), "the revoked vehicle reconnected"
        assert b.connected.wait(10), "a valid vehicle must come back after the restart"
    finally:
        a.close()
        b.close()
    fresh = Client(secure_broker.port, pki, "PV-A")
    try:
        assert not fresh.connect(timeout=3), "a revoked certificate must be refused on a new connection"
    finally:
        fresh.close()


def test_the_agent_runs_over_tls_with_its_own_certificate(
        tmp_path: Path, secure_broker: Mosquitto, pki: Path, gnss_pty: PtyGnss) -> None:
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
