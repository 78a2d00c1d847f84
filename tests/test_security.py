"""Secure by default, against a real mosquitto with TLS client certificates and the reference ACL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from agent import doctor
from agent.app import main as agent_main
from agent.cli import main
from agent.config import load
from agent.security import check
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.pty_gnss import PtyGnss
from tests.support.reference_broker import ReferenceBroker
from tests.support.tls_client import Client
from tools.make_certs import issue, load_ca, make_ca, revoke

ROOT = Path(__file__).resolve().parent.parent


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


def encrypted_key(pki: Path) -> str:
    key = serialization.load_pem_private_key((pki / "PV-A.key").read_bytes(), None)
    path = pki / "PV-A-encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"passphrase")))
    path.chmod(0o600)
    return str(path)


def chmod_key(pki: Path, mode: int) -> str:
    (pki / "PV-A.key").chmod(mode)
    return str(pki / "PV-A.key")


def fifo(pki: Path) -> str:
    """A named pipe where the key should be: reading it would wait for a writer for ever."""
    path = pki / "key.fifo"
    os.mkfifo(path, 0o600)
    return str(path)


#: (what is wrong, how to plant it, the key it is about, what every check must say)
FAULTS: list[tuple[str, Any, str, str]] = [
    ("plain TCP", lambda pki: {"brokers": ["mqtt://localhost:1883"]}, "mqtt.brokers", "is plain TCP"),
    ("no CA", lambda pki: {"tls": {"ca_file": None}}, "mqtt.tls.ca_file", "not set"),
    ("missing CA", lambda pki: {"tls": {"ca_file": str(pki / "nothing.crt")}}, "mqtt.tls.ca_file", "does not exist"),
    ("relative CA path", lambda pki: {"tls": {"ca_file": "ca.crt"}}, "mqtt.tls.ca_file", "relative path"),
    ("another vehicle's certificate", lambda pki: {"tls": {"cert_file": str(pki / "PV-B.crt"),
                                                           "key_file": str(pki / "PV-B.key")}},
     "mqtt.tls.cert_file", "issued to 'PV-B', but this vehicle is 'PV-A'"),
    ("expired certificate", lambda pki: {"tls": {"cert_file": str(pki / "PV-A-expired.crt"),
                                                 "key_file": str(pki / "PV-A-expired.key")}},
     "mqtt.tls.cert_file", "expired on"),
    ("certificate of another CA", lambda pki: {"tls": {"cert_file": str(pki / "PV-ROGUE.crt"),
                                                       "key_file": str(pki / "PV-ROGUE.key")}},
     "mqtt.tls.cert_file", "not signed by the CA"),
    ("server certificate", lambda pki: {"tls": {"cert_file": str(pki / "PV-A-server.crt"),
                                                "key_file": str(pki / "PV-A-server.key")}},
     "mqtt.tls.cert_file", "not a client certificate"),
    ("key of another certificate", lambda pki: {"tls": {"key_file": str(pki / "PV-B.key")}},
     "mqtt.tls.key_file", "is not the key of"),
    ("encrypted key", lambda pki: {"tls": {"key_file": encrypted_key(pki)}}, "mqtt.tls.key_file", "is encrypted"),
    ("key readable by others", lambda pki: {"tls": {"key_file": chmod_key(pki, 0o644)}},
     "mqtt.tls.key_file", "is readable by others (0644)"),
    ("key writable by its group", lambda pki: {"tls": {"key_file": chmod_key(pki, 0o660)}},
     "mqtt.tls.key_file", "is writable by its group (0660)"),
    ("key a FIFO", lambda pki: {"tls": {"key_file": fifo(pki)}}, "mqtt.tls.key_file", "is not a regular file"),
]


@pytest.mark.parametrize(("name", "plant", "key", "expected"), FAULTS, ids=[f[0] for f in FAULTS])
def test_run_config_check_and_doctor_refuse_the_same_things_with_the_same_words(
        tmp_path: Path, pki: Path, capsys: pytest.CaptureFixture[str],
        name: str, plant: Any, key: str, expected: str) -> None:
    ca = load_ca(pki)
    issue(pki, "PV-A-expired", "PV-A", ca, expired=True)
    issue(pki, "PV-A-server", "PV-A", ca, server_hosts=["vehicle.example.org"])
    path = secure_cfg(tmp_path, pki, **plant(pki))
    leaf = key.rsplit(".", 1)[1]
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.lstrip().startswith(f"{leaf}:"))
    # run: refuses to start
    assert agent_main(path) == 2
    err = capsys.readouterr().err
    assert f"refusing to start: {path}:{line}: {key}: " in err and expected in err, err
    # config check: the same problem, with its line, exit 2
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert any(p.startswith(f"{path}:{line}: {key}: ") and expected in p for p in err.splitlines()), err
    # doctor: a FAIL saying the same
    cfg = load(path, {})
    report = doctor.Report()
    if key == "mqtt.brokers":
        doctor.check_broker(report, cfg, cfg.mqtt.brokers[0], timeout=0.5)
        assert any(c.result == "FAIL" and "plain TCP" in c.detail for c in report.checks), report.checks
        return
    doctor.check_files(report, path, cfg)
    if key == "mqtt.tls.ca_file" and cfg.mqtt.tls.ca_file is None:
        return  # doctor has nothing to look at; its broker step fails at the TLS handshake
    failed = [c for c in report.checks if c.result == "FAIL"]
    assert any(expected in c.detail for c in failed), report.checks


def test_lab_mode_turns_each_refusal_into_a_warning_that_says_where_lab_mode_was_set(
        tmp_path: Path, pki: Path) -> None:
    path = secure_cfg(tmp_path, pki, brokers=["mqtt://localhost:1883"], lab_mode=True)
    checked = check(path, {})
    assert checked.problems == [] and checked.cfg is not None
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "lab_mode:" in text)
    assert any(w.startswith(f"LAB MODE (mqtt.lab_mode: true at {path}:{line}): ") and "plain TCP" in w
               for w in checked.warnings), checked.warnings
    assert any("simulation: true: the inputs are mock pins" in w for w in checked.warnings), checked.warnings


def test_a_certificate_not_yet_valid_is_refused_only_when_the_clock_is_known_to_be_right(
        tmp_path: Path, pki: Path) -> None:
    from datetime import UTC, datetime, timedelta

    issue(pki, "PV-A", "PV-A", load_ca(pki))
    path = secure_cfg(tmp_path, pki)
    early = datetime.now(UTC) - timedelta(days=3)  # the cert starts a day ago: three days ago it was not valid
    synced = check(path, {}, now=early, clock_synced=True)
    assert any("mqtt.tls.cert_file: not valid before" in p for p in synced.problems), synced.problems
    unsynced = check(path, {}, now=early, clock_synced=False)
    assert unsynced.problems == [], "a Pi without RTC before NTP must still start: its buttons work offline"
    assert any("not valid before" in w and "not synchronised" in w for w in unsynced.warnings), unsynced.warnings


def test_the_daemon_does_not_load_cryptography_to_check_its_certificate(tmp_path: Path, pki: Path) -> None:
    """The check runs in a child process: the daemon's memory does not pay for cryptography."""
    path = secure_cfg(tmp_path, pki)
    code = ("import sys; from pathlib import Path; from agent.security import check; "
            f"c = check(Path({str(path)!r}), {{}}, as_service=True); "
            "print(len(c.problems), any(m.startswith('cryptography') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["0", "False"], done.stdout + done.stderr
    (pki / "PV-A.key").chmod(0o644)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["1", "False"], "the child's findings reach the parent: " + done.stdout
