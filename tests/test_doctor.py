"""doctor tells each planted fault apart: missing device, no NMEA, wrong baud rate, broker down,
wrong CA, expired client certificate, world-readable key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
from tests.support.agent_proc import ROOT, agent_config
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


def test_a_certificate_from_another_ca_with_the_same_name_gets_the_another_ca_hint(
        tmp_path: Path, pki: Path, tls_broker: Mosquitto) -> None:
    twin = make_ca(pki, "twin-ca")  # make_certs.py run a second time: same CA name, another key
    issue(pki, "foreign", "PV-TEST-1", twin)
    cfg = tls_config(tmp_path, tls_broker.port, pki, cert="foreign")
    check = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2), f"broker localhost:{tls_broker.port}")
    assert check.result == "FAIL", check
    assert "certificate from another CA?" in check.hint, check


def test_a_port_held_by_another_program_is_named(tmp_path: Path, broker: Mosquitto) -> None:
    gnss = tmp_path / "gnss"
    receiver = Receiver(gnss, baud=9600)
    receiver.start()
    gpsd = tmp_path / "gpsd"  # a program of that name holding the port open, as gpsd does
    shutil.copy("/bin/sleep", gpsd)
    with gnss.open("rb") as port:
        holder = subprocess.Popen([str(gpsd), "30"], stdin=port)
    try:
        time.sleep(0.2)
        report = doctor.run(write_config(tmp_path, agent_config(tmp_path, broker.port, gnss)), serial_seconds=1)
    finally:
        holder.kill()
        holder.wait()
        receiver.close()
    check = result(report, "GNSS device")
    assert check.result == "FAIL" and f"held by gpsd (pid {holder.pid})" in check.detail, check
    assert "systemctl disable --now gpsd.socket gpsd" in check.hint


def run_cli(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--config", str(config), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_baud_scan_shows_progress_and_the_report_ends_with_a_verdict(tmp_path: Path, broker: Mosquitto) -> None:
    gnss = tmp_path / "gnss"
    receiver = Receiver(gnss, baud=None)  # nothing at any rate: the whole scan runs
    receiver.start()
    try:
        done = run_cli(write_config(tmp_path, agent_config(tmp_path, broker.port, gnss)), "--serial-seconds", "0.5")
    finally:
        receiver.close()
    assert done.returncode == 1
    progress = [line for line in done.stderr.splitlines() if "baud" in line]
    assert len(progress) >= 7 and "trying 4800 baud (1/7)" in progress[1], done.stderr
    last = done.stdout.strip().splitlines()[-2:]
    assert last[0].startswith("verdict: FAIL (1 FAIL, "), done.stdout
    assert "run patrol-agent doctor again" in " ".join(last)


def test_lines_wrap_at_80_columns_and_nothing_is_cut(tmp_path: Path) -> None:
    deep = tmp_path / ("a-rather-long-directory-name-for-a-vehicle-unit" * 2) / "etc" / "patrol-agent"
    deep.mkdir(parents=True)
    cfg = agent_config(deep, free_port(), deep / "gnss-receiver-with-a-long-name")
    done = run_cli(write_config(deep, cfg), "--serial-seconds", "0.2")
    lines = done.stdout.splitlines()
    assert "..." not in done.stdout and "…" not in done.stdout
    for line in lines:  # longer than 80 only where a single word (a path) is: it is kept whole to be copied
        assert len(line) <= 80 or " " not in line.strip().removeprefix("-> ").strip(), line
    assert str(deep / "gnss-receiver-with-a-long-name") in done.stdout.split(), "the path comes whole, on one line"


def test_no_panic_button_simulation_and_lab_mode_each_warn(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = agent_config(tmp_path, broker.port, tmp_path / "gnss")
    cfg["inputs"]["panic_buttons"] = []
    report = doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2)
    assert result(report, "panic buttons").result == "WARN"
    assert "panic buttons are OFF" in result(report, "simulation").detail
    assert result(report, "simulation").result == "WARN"
    assert result(report, "lab mode").result == "WARN"


def test_simulated_inputs_are_opened_and_read(tmp_path: Path, broker: Mosquitto) -> None:
    report = doctor.run(write_config(tmp_path, agent_config(tmp_path, broker.port, tmp_path / "gnss")),
                        serial_seconds=0.2)
    assert result(report, "GPIO pin factory").detail == "mock (simulation)"
    check = result(report, "input driver (pin 17)")
    assert check.result == "PASS" and check.detail == "opened, reads idle"


def test_no_pin_factory_on_this_machine_fails_with_buttons_configured(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = agent_config(tmp_path, broker.port, tmp_path / "gnss", simulation=False)  # not a Pi: no GPIO at all
    check = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2), "GPIO pin factory")
    assert check.result == "FAIL" and "lgpio:" in check.detail and "native:" in check.detail, check


def test_a_fallback_factory_fails_with_buttons_configured_and_warns_without(tmp_path: Path, broker: Mosquitto) -> None:
    from gpiozero.pins.mock import MockFactory

    from drivers.gpio import select_factory

    def no_lgpio(name: str) -> Any:  # lgpio missing, gpiozero's native factory there (mock pins stand in for it)
        if name == "lgpio":
            raise ImportError("No module named 'lgpio'")
        return MockFactory()

    def choose(setting: str, *, simulation: bool) -> Any:
        return select_factory(setting, simulation=simulation, load=no_lgpio)

    cfg = agent_config(tmp_path, broker.port, tmp_path / "gnss", simulation=False)
    with_buttons = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2, gpio_select=choose),
                          "GPIO pin factory")
    cfg["inputs"]["panic_buttons"] = []
    without = result(doctor.run(write_config(tmp_path, cfg), serial_seconds=0.2, gpio_select=choose),
                     "GPIO pin factory")
    assert with_buttons.result == "FAIL" and with_buttons.detail.startswith("native, a fallback"), with_buttons
    assert "No module named 'lgpio'" in with_buttons.detail
    assert without.result == "WARN"
