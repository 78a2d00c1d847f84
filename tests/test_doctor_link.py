"""doctor's broker step on a live unit, against the shipped reference broker (config/mosquitto/), which
binds each client id to its certificate's CN: any connection with the vehicle's certificate IS the
vehicle's session. doctor must neither take the running daemon's connection over nor discard the
vehicle's persistent session (what dispatch queued for it while it was away).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import doctor
from agent.config import load
from agent.doctor_link import check_link
from tests.support.agent_proc import ROOT, AgentProcess, agent_config
from tests.support.pty_gnss import PtyGnss
from tests.support.reference_broker import ReferenceBroker
from tests.support.tls_client import Client

VEHICLE = "PV-A"


@pytest.fixture
def ref_broker(tmp_path: Path) -> Iterator[ReferenceBroker]:
    pki = tmp_path / "pki"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), "init", str(pki), "--broker-host",
                           "localhost", "--vehicle", VEHICLE], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    server = ReferenceBroker(tmp_path / "broker", pki)
    server.start()
    yield server
    server.kill()


def vehicle_daemon(tmp_path: Path, broker: ReferenceBroker, gnss: PtyGnss) -> AgentProcess:
    """``patrol-agent run`` as PV-A over TLS with its own certificate and default MQTT settings."""
    cfg = agent_config(tmp_path, broker.port, gnss.path, panic__republish_s=60)
    cfg["vehicle"]["id"] = VEHICLE
    cfg["mqtt"] = {"brokers": [f"mqtts://localhost:{broker.port}"],
                   "tls": {"ca_file": str(broker.pki / "ca.crt"), "cert_file": str(broker.pki / f"{VEHICLE}.crt"),
                           "key_file": str(broker.pki / f"{VEHICLE}.key")}}
    agent = AgentProcess(tmp_path, cfg)
    agent.config_path.chmod(0o640)
    return agent


def link(agent: AgentProcess) -> dict[str, Any]:
    status: dict[str, Any] = agent.ask("status")[-1]["status"]
    return dict(status["link"])


def wait(predicate: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def broker_checks(report: doctor.Report, port: int) -> list[doctor.Check]:
    return [c for c in report.checks if c.name.startswith(f"broker localhost:{port}")]


def test_doctor_on_a_running_unit_takes_the_link_from_the_daemon_and_leaves_its_connection_alone(
        tmp_path: Path, ref_broker: ReferenceBroker, gnss_pty: PtyGnss) -> None:
    agent = vehicle_daemon(tmp_path, ref_broker, gnss_pty)
    agent.start()
    try:
        wait(lambda: link(agent)["connected"], what="the vehicle never connected")
        before = link(agent)
        sessions_before = ref_broker.log_lines(f"u'{VEHICLE}')")
        report = doctor.run(agent.config_path, serial_seconds=0.2)
        time.sleep(1.0)  # a takeover would show by now: mosquitto closes the old connection at once
        after = link(agent)
    finally:
        agent.kill9()
    assert not ref_broker.log_lines("already connected, closing old connection")
    assert after["connected"] and after["reconnects"] == before["reconnects"], (before, after)
    assert after["connected_for_s"] > before["connected_for_s"], (before, after)
    assert ref_broker.log_lines(f"u'{VEHICLE}')") == sessions_before, "doctor opened a session as the vehicle"
    checks = broker_checks(report, ref_broker.port)
    assert [c.result for c in checks] == ["PASS"], checks
    assert "MQTT 5" in checks[0].detail and "running agent" in checks[0].detail, checks[0]


def test_doctor_without_the_daemon_checks_the_broker_and_keeps_the_vehicles_session(
        tmp_path: Path, ref_broker: ReferenceBroker, gnss_pty: PtyGnss) -> None:
    """The daemon is stopped; dispatch acknowledges the alert meanwhile (queued in the vehicle's session);
    doctor connects as the vehicle; the daemon, started again, still gets the acknowledgement."""
    dispatch = Client(ref_broker.port, ref_broker.pki, "dispatch", client_id="dispatch")
    assert dispatch.connect()
    dispatch.client.subscribe(f"patrol/{VEHICLE}/#", qos=1)
    agent = vehicle_daemon(tmp_path, ref_broker, gnss_pty)
    agent.start()
    try:
        wait(lambda: link(agent)["connected"], what="the vehicle never connected")
        assert agent.ask("sim_press", name="driver")[-1]["ok"]

        def alerts() -> list[dict[str, Any]]:
            return [json.loads(p) for t, p in list(dispatch.messages) if t.endswith("/alert")]

        wait(lambda: bool(alerts()), what="no alert at dispatch")
        alert_id = alerts()[0]["alert_id"]
        agent.terminate()
        dispatch.publish(f"patrol/{VEHICLE}/alert/ack", json.dumps(
            {"alert_id": alert_id, "action": "acknowledge", "operator": "desk-3"}).encode())
        report = doctor.Report()
        check_link(report, load(agent.config_path))  # doctor's broker step, as doctor.run makes it
        agent.start()
        wait(lambda: any(a["state"] == "acknowledged" for a in alerts()), 15, "the queued acknowledgement was lost")
    finally:
        agent.kill9()
        dispatch.close()
    checks = broker_checks(report, ref_broker.port)
    mqtt_check = next(c for c in checks if c.name.endswith("MQTT"))
    assert mqtt_check.result == "PASS" and "MQTT 5" in mqtt_check.detail, checks
