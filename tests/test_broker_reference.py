"""The shipped reference broker config (config/mosquitto/) with make_certs.py's output, on a real mosquitto:
it starts as shipped, no certificate can take another's session, oversized messages never reach a
vehicle, revocation and CRL renewal work as config/mosquitto/README.md says."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion

from agent.control import request
from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.pty_gnss import PtyGnss
from tests.support.reference_broker import ReferenceBroker
from tests.support.tls_client import Client
from tools.make_certs import load_ca, write_crl

ROOT = Path(__file__).resolve().parent.parent
VICTIM, ATTACKER = "PV-A", "PV-B"


def make_certs(*args: str) -> str:
    """The documented command, as a technician runs it."""
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_certs.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    pki = tmp_path / "pki"
    make_certs("init", str(pki), "--broker-host", "localhost", "--vehicle", VICTIM, "--vehicle", ATTACKER)
    return pki


@pytest.fixture
def ref_broker(tmp_path: Path, fleet: Path) -> Iterator[ReferenceBroker]:
    server = ReferenceBroker(tmp_path / "broker", fleet)
    server.start()
    yield server
    server.kill()


def vehicle_daemon(tmp_path: Path, broker: ReferenceBroker, gnss: PtyGnss) -> AgentProcess:
    """A real ``patrol-agent run`` as PV-A over TLS with its own certificate, and its default client id."""
    cfg = agent_config(tmp_path, broker.port, gnss.path)
    cfg["vehicle"]["id"] = VICTIM
    cfg["mqtt"].update(brokers=[f"mqtts://localhost:{broker.port}"], lab_mode=False,
                       tls={"ca_file": str(broker.pki / "ca.crt"), "cert_file": str(broker.pki / f"{VICTIM}.crt"),
                            "key_file": str(broker.pki / f"{VICTIM}.key")})
    return AgentProcess(tmp_path, cfg)


def wait(predicate: Any, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def link(agent: AgentProcess) -> dict[str, Any]:
    status: dict[str, Any] = agent.ask("status")[-1]["status"]
    return dict(status["link"])


def test_the_reference_config_starts_as_shipped_with_make_certs_output(ref_broker: ReferenceBroker) -> None:
    vehicle, dispatch = Client(ref_broker.port, ref_broker.pki, VICTIM), Client(ref_broker.port, ref_broker.pki,
                                                                                 "dispatch")
    try:
        assert vehicle.connect() and dispatch.connect(), ref_broker.log.read_text()[-2000:]
    finally:
        vehicle.close()
        dispatch.close()
    crl = x509.load_pem_x509_crl((ref_broker.pki / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300), "a lab CRL must last"


def attack(port: int, pki: Path, client_ids: list[str], attempts: int, *, midway: Any = None) -> int:
    """Connect ``attempts`` times with the attacker's certificate, claiming ``client_ids`` in turn
    (clean session: on a broker that lets us in, the victim's session is discarded), until CONNACK."""
    accepted = 0
    for i in range(attempts):
        if i == attempts // 2 and midway is not None:
            midway()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_ids[i % len(client_ids)],
                             protocol=mqtt.MQTTv311, clean_session=True)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / f"{ATTACKER}.crt"), str(pki / f"{ATTACKER}.key"))
        client.tls_set_context(ctx)
        client.connect("localhost", port, keepalive=5)
        deadline = time.monotonic() + 3
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(0.02)
        accepted += client.is_connected()
        client.disconnect()
        client.loop(0.02)
    return accepted


def test_no_certificate_can_take_a_vehicles_or_dispatchs_session(
        tmp_path: Path, ref_broker: ReferenceBroker, gnss_pty: PtyGnss) -> None:
    pki = ref_broker.pki
    dispatch = Client(ref_broker.port, pki, "dispatch", client_id="dispatch-console")

    def auto_ack(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        alert = json.loads(msg.payload)
        if alert.get("state") in ("raised", "delivered") and not msg.retain:
            ack = {"alert_id": alert["alert_id"], "action": "acknowledge", "operator": "auto"}
            dispatch.client.publish(msg.topic + "/ack", json.dumps(ack), qos=1)

    dispatch.client.message_callback_add("patrol/+/alert", auto_ack)
    assert dispatch.connect()
    dispatch.client.subscribe("patrol/#", qos=1)
    agent = vehicle_daemon(tmp_path, ref_broker, gnss_pty)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=2).start()
    stages: dict[str, float] = {}

    def alarm() -> None:
        for reply in request(agent.runtime_dir, "panic_test", timeout=15):
            stages.setdefault(str(reply.get("stage")), time.monotonic())

    alarm_thread = threading.Thread(target=alarm, daemon=True)
    try:
        wait(lambda: link(agent)["connected"], what="the vehicle never connected")
        time.sleep(0.5)
        before = link(agent)
        sessions_before = ref_broker.log_lines(f"u'{VICTIM}')")
        # the daemon's default client id today and formerly, and the dispatch client's own
        accepted = attack(ref_broker.port, pki, [VICTIM, f"patrol-{VICTIM}", "dispatch-console", "dispatch"], 200,
                          midway=alarm_thread.start)
        alarm_thread.join(15)
        after = link(agent)
        dispatch_sessions = (dispatch.connects, dispatch.disconnects)
    finally:
        feeder.stop()
        agent.kill9()
        dispatch.close()
    victim_sessions = ref_broker.log_lines(f"u'{VICTIM}')")
    ack_s = stages.get("acknowledged", float("nan")) - stages.get("accepted", float("nan"))
    print(f"\nattacker accepted {accepted}/200; victim sessions {len(sessions_before)} -> {len(victim_sessions)}; "
          f"alarm acknowledged {ack_s:.3f} s after accepted")
    assert accepted == 200, "control: the attacker's own certificate is valid and gets in every time"
    assert victim_sessions == sessions_before, victim_sessions  # no new session of the victim's during the attack
    assert not ref_broker.log_lines("already connected, closing old connection"), "a session was taken over"
    assert after["connected"] and after["reconnects"] == before["reconnects"], (before, after)
    assert dispatch_sessions == (1, 0), "dispatch's session was taken over"
    assert "acknowledged" in stages, stages
    assert stages["acknowledged"] - stages["accepted"] < 1.0, stages


def publish_raw(port: int, pki: Path, identity: str, topic: str, size: int, chunk: int = 1 << 20) -> int:
    """One QoS 0 PUBLISH of ``size`` bytes written over TLS as fast as the broker reads it; returns the
    bytes the broker took before it closed the connection (all of them if it never did)."""
    def text(value: str) -> bytes:
        return struct.pack("!H", len(value)) + value.encode()

    def remaining(n: int) -> bytes:
        out = b""
        while True:
            n, byte = divmod(n, 128)
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / f"{identity}.crt"), str(pki / f"{identity}.key"))
    with ctx.wrap_socket(socket.create_connection(("localhost", port), timeout=10), server_hostname="localhost") as s:
        body = text("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + text(identity)
        s.sendall(b"\x10" + remaining(len(body)) + body)
        assert s.recv(4)[:1] == b"\x20", "CONNACK"
        head = text(topic)
        sent = 0
        block = b"x" * chunk
        try:
            s.sendall(b"\x30" + remaining(len(head) + size) + head)
            while sent < size:
                s.sendall(block[: min(chunk, size - sent)])
                sent += min(chunk, size - sent)
        except OSError:
            pass
        return sent


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def test_a_200_mb_command_is_refused_by_the_broker_before_the_vehicle_reads_it(
        tmp_path: Path, ref_broker: ReferenceBroker, gnss_pty: PtyGnss) -> None:
    pki = ref_broker.pki
    watcher = Client(ref_broker.port, pki, "dispatch-watch")
    assert watcher.connect()
    watcher.client.subscribe(f"patrol/{VICTIM}/reply", qos=1)
    agent = vehicle_daemon(tmp_path, ref_broker, gnss_pty)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=2).start()
    try:
        wait(lambda: link(agent)["connected"], what="the vehicle never connected")
        time.sleep(2.0)  # settled: its steady state, not its start-up, is the baseline
        assert agent.proc is not None
        before = memory_kb(agent.proc.pid)
        sent = publish_raw(ref_broker.port, pki, "dispatch", f"patrol/{VICTIM}/cmd", 200 * 1024 * 1024)
        # control: a command sent after it arrives and is answered, so the daemon has read whatever came before
        now = dt.datetime.now(dt.UTC)
        ping_id = f"ping-{uuid.uuid4()}"
        ping = {"command_id": ping_id, "vehicle_id": VICTIM, "verb": "ping", "args": {},
                "issued_at": (now - dt.timedelta(seconds=1)).isoformat(),
                "expires_at": (now + dt.timedelta(minutes=1)).isoformat()}
        tool = Client(ref_broker.port, pki, "dispatch-tool")
        assert tool.connect()
        tool.publish(f"patrol/{VICTIM}/cmd", json.dumps(ping).encode())
        tool.close()
        wait(lambda: any(ping_id.encode() in p for _, p in watcher.messages), timeout=60,
             what="the daemon never answered the ping after the large message")
        after = memory_kb(agent.proc.pid)
        still = link(agent)
    finally:
        feeder.stop()
        agent.kill9()
        watcher.close()
    grown_mb = (after["VmHWM"] - before["VmHWM"]) / 1024
    print(f"\nbroker took {sent / 2**20:.1f} MiB of 200 MiB; daemon RSS {before['VmRSS'] / 1024:.1f} -> "
          f"{after['VmRSS'] / 1024:.1f} MB, peak {before['VmHWM'] / 1024:.1f} -> {after['VmHWM'] / 1024:.1f} MB")
    assert grown_mb < 5, f"the daemon's peak RSS grew by {grown_mb:.1f} MB"
    assert ref_broker.log_lines("disconnected due to oversize packet"), "the broker refused the sender"
    assert sent < 200 * 1024 * 1024, "the broker read the whole message"
    assert still["connected"], "the vehicle kept its connection"


def test_a_revoked_vehicle_is_refused_after_the_documented_steps(ref_broker: ReferenceBroker) -> None:
    pki = ref_broker.pki
    a, b = Client(ref_broker.port, pki, VICTIM), Client(ref_broker.port, pki, ATTACKER)
    try:
        assert a.connect() and b.connect()
        out = make_certs("revoke", str(pki), VICTIM)  # README step 1: revoke, install the CRL
        assert "1 revoked" in out
        ref_broker.install_crl()
        assert ref_broker.proc is not None
        os.kill(ref_broker.proc.pid, signal.SIGHUP)  # what `systemctl reload mosquitto` does
        time.sleep(1.0)
        assert a.connected.is_set(), "as documented: a CRL alone leaves the open session connected"
        ref_broker.restart()  # README step 2: every session is closed, only valid ones come back
        time.sleep(3.0)
        assert not a.connected.is_set(), "the revoked vehicle reconnected"
        assert b.connected.wait(10), "a valid vehicle must come back after the restart"
    finally:
        a.close()
        b.close()
    fresh = Client(ref_broker.port, pki, VICTIM)
    try:
        assert not fresh.connect(timeout=3), "a revoked certificate must be refused on a new connection"
    finally:
        fresh.close()
    assert "1 revoked" in make_certs("show", str(pki)) and VICTIM in make_certs("show", str(pki))


def test_an_expired_crl_locks_everyone_out_until_the_documented_renewal(tmp_path: Path, fleet: Path) -> None:
    write_crl(fleet, load_ca(fleet), {}, days=1, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))
    server = ReferenceBroker(tmp_path / "broker", fleet)
    server.start()
    try:
        locked_out = Client(server.port, fleet, VICTIM)
        try:
            assert not locked_out.connect(timeout=3), "an expired CRL refuses every certificate"
        finally:
            locked_out.close()
        assert "EXPIRED" in make_certs("show", str(fleet))
        make_certs("crl", str(fleet))  # the documented renewal: new CRL, install, reload
        server.install_crl()
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGHUP)
        time.sleep(1.0)
        back = Client(server.port, fleet, VICTIM)
        try:
            assert back.connect(), "after the renewal and a reload the vehicle gets in again"
        finally:
            back.close()
    finally:
        server.kill()


def test_the_watch_identity_cannot_command_a_vehicle(tmp_path: Path, ref_broker: ReferenceBroker,
                                                     gnss_pty: PtyGnss) -> None:
    """`patrol-agent watch` only reads and acknowledges: its certificate, on a technician's laptop,
    must not be a way to command the fleet."""
    agent = vehicle_daemon(tmp_path, ref_broker, gnss_pty)
    agent.start()
    watcher = Client(ref_broker.port, ref_broker.pki, "dispatch-watch")
    try:
        wait(lambda: link(agent)["connected"], what="the vehicle never connected")
        assert watcher.connect()
        watcher.client.subscribe(f"patrol/{VICTIM}/reply", qos=1)
        now = dt.datetime.now(dt.UTC)
        ping = {"command_id": f"ping-{uuid.uuid4()}", "vehicle_id": VICTIM, "verb": "ping", "args": {},
                "issued_at": (now - dt.timedelta(seconds=1)).isoformat(),
                "expires_at": (now + dt.timedelta(minutes=1)).isoformat()}
        watcher.publish(f"patrol/{VICTIM}/cmd", json.dumps(ping).encode())
        time.sleep(3)
        replies = [p for t, p in watcher.messages if t.endswith("/reply")]
    finally:
        watcher.close()
        agent.kill9()
    assert not replies, "the vehicle ran a command sent with the watch identity"
