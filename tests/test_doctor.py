"""doctor tells each planted fault apart: missing device, no NMEA, wrong baud rate, broker down,
wrong CA, expired client certificate, world-readable key."""

from __future__ import annotations

import os
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent import doctor
from agent.cli import main
from tests.support.agent_proc import agent_config
from tests.support.broker import Mosquitto, free_port, tls_listener
from tests.support.nmea import epoch
from tools.make_certs import issue, make_ca


def write_config(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o640)
    return path


def result(report: doctor.Report, name: str) -> doctor.Check:
    found = [c for c in report.checks if c.name.startswith(name)]
    assert found, f"no check {name!r} in {[c.name for c in report.checks]}"
    return next((c for c in found if c.result == "FAIL"), found[-1])


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    ca = make_ca(out)
    issue(out, "broker", "localhost", ca, server_hosts=["localhost", "127.0.0.1"])
    issue(out, "PV-TEST-1", "PV-TEST-1", ca)
    issue(out, "expired", "PV-TEST-1", ca, expired=True)
    make_ca(out, "other-ca", "another CA")
    return out


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Path) -> Iterator[Mosquitto]:
    port = free_port()
    server = Mosquitto(tmp_path / "tls-broker", port=port, extra_conf=tls_listener(port, pki))
    server.start()
    yield server
    server.kill()


class Receiver(threading.Thread):
    """Writes NMEA at its own baud rate; at any other rate the line carries garbage, as a real UART does."""

    def __init__(self, path: Path, baud: int | None) -> None:
        super().__init__(daemon=True)
        self.master, slave = os.openpty()
        os.set_blocking(self.master, False)
        self._slave = slave
        path.symlink_to(os.ttyname(slave))
        self.baud = baud
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            speed = termios.tcgetattr(self.master)[5]  # the rate the reader set on its side of the line
            wanted = getattr(termios, f"B{self.baud}") if self.baud else None
            data = epoch(f"1200{i % 60:02d}.00").encode() if speed == wanted else bytes(range(0x80, 0xFF))
            try:
                os.write(self.master, data)
                while os.read(self.master, 4096):
                    pass
            except OSError:
                pass
            i += 1
            time.sleep(0.1)

    def close(self) -> None:
        self.stop.set()
        self.join(2)
        os.close(self.master)
        os.close(self._slave)


def test_missing_device(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = agent_config(tmp_path, broker.port, tmp_path / "no-such-tty")
    check = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=1), "GNSS device")
    assert check.result == "FAIL" and "does not exist" in check.detail


def test_no_nmea_and_wrong_baud_rate(tmp_path: Path, broker: Mosquitto) -> None:
    gnss = tmp_path / "gnss"
    receiver = Receiver(gnss, baud=None)  # garbage at every rate
    receiver.start()
    try:
        cfg = agent_config(tmp_path, broker.port, gnss)
        check = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=1), "GNSS device")
    finally:
        receiver.close()
    assert check.result == "FAIL" and "no NMEA at any baud rate" in check.detail


def test_wrong_baud_rate_is_detected_and_named(tmp_path: Path, broker: Mosquitto) -> None:
    gnss = tmp_path / "gnss"
    receiver = Receiver(gnss, baud=4800)
    receiver.start()
    try:
        cfg = agent_config(tmp_path, broker.port, gnss)  # configured 9600
        report = doctor.run(write_config(tmp_path, cfg), serial_seconds=1)
    finally:
        receiver.close()
    check = result(report, "GNSS device")
    assert check.result == "FAIL" and "found NMEA at 4800 baud" in check.detail
    assert check.hint == "set gnss.baudrate: 4800"


def test_healthy_receiver_and_lab_broker_pass(tmp_path: Path, broker: Mosquitto) -> None:
    gnss = tmp_path / "gnss"
    receiver = Receiver(gnss, baud=9600)
    receiver.start()
    try:
        report = doctor.run(write_config(tmp_path, agent_config(tmp_path, broker.port, gnss)), serial_seconds=1.5)
    finally:
        receiver.close()
    assert result(report, "GNSS device").result == "PASS"
    assert result(report, "GNSS fix").result == "PASS"
    assert result(report, f"broker 127.0.0.1:{broker.port} MQTT").result == "PASS"


def test_broker_down(tmp_path: Path) -> None:
    cfg = agent_config(tmp_path, free_port(), tmp_path / "gnss")
    report = doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2)
    check = result(report, "broker 127.0.0.1")
    assert check.result == "FAIL" and check.detail == "connection refused"


def tls_config(tmp_path: Path, port: int, pki: Path, *, ca: str = "ca", cert: str = "PV-TEST-1") -> dict[str, Any]:
    cfg = agent_config(tmp_path, port, tmp_path / "gnss")
    cfg["mqtt"].update(brokers=[f"mqtts://localhost:{port}"], lab_mode=False,
                       tls={"ca_file": str(pki / f"{ca}.crt"), "cert_file": str(pki / f"{cert}.crt"),
                            "key_file": str(pki / f"{cert}.key")})
    return cfg


def test_tls_broker_with_good_certificates_passes(tmp_path: Path, pki: Path, tls_broker: Mosquitto) -> None:
    report = doctor.run(write_config(tmp_path, tls_config(tmp_path, tls_broker.port, pki)), serial_seconds=0.2)
    assert result(report, f"broker localhost:{tls_broker.port} TLS").result == "PASS"
    assert result(report, f"broker localhost:{tls_broker.port} MQTT").result == "PASS"
    assert result(report, "client certificate").result == "PASS"


def test_wrong_ca(tmp_path: Path, pki: Path, tls_broker: Mosquitto) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki, ca="other-ca")
    check = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2), f"broker localhost:{tls_broker.port}")
    assert check.result == "FAIL" and "TLS handshake failed: the broker's certificate is not trusted" in check.detail
    assert "wrong CA" in check.hint


def test_expired_client_certificate(tmp_path: Path, pki: Path, tls_broker: Mosquitto) -> None:
    cfg = tls_config(tmp_path, tls_broker.port, pki, cert="expired")
    report = doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2)
    local = result(report, "client certificate")
    assert local.result == "FAIL" and local.detail.startswith("expired on")
    remote = result(report, f"broker localhost:{tls_broker.port}")
    assert remote.result == "FAIL" and "expired" in remote.detail, remote


def test_world_readable_key(tmp_path: Path, pki: Path, tls_broker: Mosquitto) -> None:
    (pki / "PV-TEST-1.key").chmod(0o644)
    report = doctor.run(write_config(tmp_path, tls_config(tmp_path, tls_broker.port, pki)), serial_seconds=0.2)
    check = result(report, "private key")
    assert check.result == "FAIL" and "readable by others" in check.detail


def test_doctor_exits_non_zero_on_a_fail_and_prints_plain_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = agent_config(tmp_path, free_port(), tmp_path / "gnss")
    code = main(["doctor", "--config", str(write_config(tmp_path, cfg)), "--serial-seconds", "0.2"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL  broker 127.0.0.1" in out and "connection refused" in out
