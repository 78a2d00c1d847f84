"""The spine under fire: one owner of the MQTT client, message ids that wrap, threads that die.

Real mosquitto, real sockets, the real daemon or the whole unit in-process;
the faults are injected for real (a link that takes 37 bytes at a time, a
PUBACK that never comes, a key swapped under the running daemon, an
exception raised inside a thread).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.inproc import RunningAgent
from tests.support.mqtt import Collector
from tests.support.mqtt_proxy import Counts, MqttProxy
from tests.support.pty_gnss import PtyGnss
from tests.support.rows import plant

VEHICLE = "PV-TEST-1"


def backlog(state_dir: Path, count: int) -> None:
    """``count`` positions waiting in the outbox, as after an outage (written before the agent starts)."""
    plant(state_dir, VEHICLE, ["position"] * count)


def seqs(collector: Collector, suffix: str) -> set[int]:
    return {int(m.json()["seq"]) for m in collector.on(suffix) if "seq" in m.json()}


@pytest.fixture
def noticing_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that also logs notices: "disconnected due to malformed packet" is one."""
    server = Mosquitto(tmp_path / "broker", log_types=("error", "warning", "notice"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def partial_writes(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Every send of the agent's MQTT socket takes at most 37 bytes (a congested link's partial
    writes, at the socket call paho makes); returns the names of the threads that sent."""
    writers: set[str] = set()
    original = mqtt.Client._sock_send

    def send(client: mqtt.Client, data: bytes) -> int:
        if client._client_id == VEHICLE.encode():  # the agent: its client id is the vehicle id
            writers.add(threading.current_thread().name)
            return original(client, data[:37])
        return original(client, data)

    monkeypatch.setattr(mqtt.Client, "_sock_send", send)
    return writers


def test_a_link_taking_37_bytes_at_a_time_corrupts_no_packet(
        tmp_path: Path, noticing_broker: Mosquitto, gnss_pty: PtyGnss, mock_factory: MockFactory,
        partial_writes: set[str]) -> None:
    """5,000 positions drained and 50 alerts raised meanwhile, through a congested link: every
    send partial, and a slow reader at the other end."""
    cfg = agent_config(tmp_path, noticing_broker.port, gnss_pty.path, reporting__moving_interval_s=600,
                       reporting__stopped_interval_s=600, panic__republish_s=600)
    proxy = MqttProxy(noticing_broker.port, chunk=37, rcvbuf=2048, pause=0.0002)
    cfg["mqtt"]["brokers"] = [f"mqtt://127.0.0.1:{proxy.port}"]
    cfg["outbox"] = {"max_messages": 20_000}
    backlog(Path(cfg["state_dir"]), 5000)
    dispatch = Collector(noticing_broker.port, "patrol/#", client_id="partial-writes-dispatch")
    raised: list[str] = []
    try:
        with RunningAgent(cfg, mock_factory) as running:
            alerts = running.agent.alerts
            assert alerts is not None
            dispatch.wait_for(lambda m: len(positions(m)) >= 100, timeout=30)
            for _ in range(50):  # while the backlog drains
                raised.append(running.on_core(lambda: alerts.raise_alert("test", test=True)).alert_id)
                time.sleep(0.02)
            dispatch.wait_for(lambda m: len({(p["boot"], p["seq"]) for p in positions(m)}) >= 5000
                              and {a["alert_id"] for a in (x.json() for x in m if x.topic.endswith("/alert"))}
                              >= set(raised), timeout=120)
    finally:
        dispatch.close()
        proxy.close()
    log = noticing_broker.log.read_text()
    assert "malformed" not in log.lower(), log[-2000:]
    assert proxy.connections == 1, "the link was never dropped"
    assert partial_writes == {"uplink"}, f"one owner of the client: written by {partial_writes}"


def test_message_ids_wrap_and_a_row_is_deleted_only_on_its_own_puback(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, mock_factory: MockFactory) -> None:
    """70,000 publishes on one connection, status publishes between them; after the 16-bit
    message id wraps, the PUBACK of a row that reuses a status's id is withheld at a proxy."""
    total = 70_000
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=600,
                       reporting__stopped_interval_s=600)
    cfg["mqtt"].update(ack_timeout_s=600, keepalive_s=600)
    cfg["outbox"] = {"max_messages": total * 2, "max_bytes": 1 << 31}
    status_mids: set[int] = set()
    withheld: list[int] = []

    def drop(mid: int, counts: Counts) -> bool:
        for topic, used in reversed(counts.publishes):  # the latest publish with this id
            if used == mid:
                if topic.endswith("/status"):
                    status_mids.add(mid)
                    return False
                if mid in status_mids and not withheld:
                    withheld.append(mid)
                    return True
                return False
        return False

    proxy = MqttProxy(broker.port, drop_puback=drop)
    cfg["mqtt"]["brokers"] = [f"mqtt://127.0.0.1:{proxy.port}"]
    backlog(Path(cfg["state_dir"]), total)
    try:
        with RunningAgent(cfg, mock_factory) as running:
            agent = running.agent
            assert agent.uplink is not None and agent.sender is not None
            uplink, sender = agent.uplink, agent.sender
            topic = f"patrol/{VEHICLE}/status"
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                depth = running.on_core(lambda: agent.outbox.depth)
                if depth <= 1 and withheld:
                    break
                running.on_core(lambda: uplink.publish(agent.forwarder.link.generation, topic,  # type: ignore[union-attr]
                                                       b'{"between":true}', retain=False))
                time.sleep(0.01)
            time.sleep(1.0)  # anything still in flight is acknowledged (or not) by now
            depth = running.on_core(lambda: agent.outbox.depth)
            left = running.on_core(lambda: sorted(agent.outbox._leased))
    finally:
        proxy.close()
    tracked = [mid for topic, mid in proxy.counts.publishes if not topic.endswith("/status")]
    assert len(tracked) >= total, "every row was published"
    assert max(mid or 0 for _, mid in proxy.counts.publishes) == 65535 and withheld, "the ids wrapped"
    acked_rows = len(proxy.counts.pubacks_forwarded) - sum(1 for t, _ in proxy.counts.publishes
                                                           if t.endswith("/status"))
    assert depth == 1, f"the row whose PUBACK never came must stay in the outbox (depth {depth}, left {left})"
    assert len(tracked) - depth == acked_rows, "every deleted row had its own PUBACK"
    assert sender is not None


# --- a key swapped under the running daemon; threads that die ------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    from tools.make_certs import issue, make_ca

    out = tmp_path / "pki"
    ca = make_ca(out)
    issue(out, "broker", "localhost", ca, server_hosts=["localhost", "127.0.0.1"])
    issue(out, VEHICLE, VEHICLE, ca)
    issue(out, "other", VEHICLE, ca)  # same name, another key: the one swapped in by mistake
    return out


def status(agent: AgentProcess) -> dict[str, Any]:
    reply = agent.ask("status")[-1]
    assert reply["ok"], reply
    return reply["status"]  # type: ignore[no-any-return]


def wait(predicate: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"not within {timeout} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - began


def test_a_mismatched_key_is_a_fault_with_retries_and_the_link_returns_when_it_is_fixed(
        tmp_path: Path, pki: Path, gnss_pty: PtyGnss) -> None:
    from tests.support.broker import free_port, tls_listener

    port = free_port()
    broker = Mosquitto(tmp_path / "tls-broker", port=port, extra_conf=tls_listener(port, pki))
    broker.start()
    cfg = agent_config(tmp_path, port, gnss_pty.path)
    cfg["vehicle"]["id"] = VEHICLE
    key = pki / f"{VEHICLE}.key"
    cfg["mqtt"].update(brokers=[f"mqtts://localhost:{port}"], lab_mode=False,
                       tls={"ca_file": str(pki / "ca.crt"), "cert_file": str(pki / f"{VEHICLE}.crt"),
                            "key_file": str(key)})
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    try:
        assert agent.proc is not None
        pid = agent.proc.pid
        wait(lambda: status(agent)["link"]["connected"], 15, "the link up")
        good = key.read_bytes()
        key.write_bytes((pki / "other.key").read_bytes())  # a rotation gone wrong
        broker.restart()  # the next connection needs the key
        took = wait(lambda: "link_setup_failed" in status(agent)["faults_detail"], 5, "a fault naming the cause")
        detail = status(agent)["faults_detail"]["link_setup_failed"]
        assert "private key does not match the certificate" in detail, detail
        time.sleep(3)
        assert agent.log.read_text().count("set-up failed") >= 2, "retried (with backoff)"
        key.write_bytes(good)
        wait(lambda: status(agent)["link"]["connected"], 30, "the link back once the right key returns")
        assert "link_setup_failed" not in status(agent)["faults_detail"]
        assert agent.running and agent.proc.pid == pid, "no restart"
        print(f"fault {took:.1f} s after the broker restart")
    finally:
        agent.kill9()
        broker.kill()


def test_a_thread_killed_by_an_exception_is_reported_and_comes_back(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    dispatch = Collector(broker.port, "patrol/#", client_id="thread-death-dispatch")
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 2)
        for thread in ("gnss-reader", "uplink", "control", "outbox-checkpoint"):
            assert agent.ask("debug_raise", thread=thread)[-1]["ok"]
            wait(lambda t=thread: f"thread_died:{t}" in status(agent)["faults_detail"], 5, f"{thread}: a fault")
            wait(lambda t=thread: status(agent)["threads"][t]["alive"], 5, f"{thread}: back")
            assert status(agent)["threads"][thread]["restarts"] == 1
        assert "InjectedFault" in status(agent)["faults_detail"]["thread_died:gnss-reader"]
        before = len(positions(dispatch.messages))
        dispatch.wait_for(lambda m: len(positions(m)) >= before + 3, timeout=10)  # the reader reads again
        events = [m.json() for m in dispatch.on("/event")]
        assert {e["name"] for e in events if e["event"] == "fault"} >= {"thread_died:gnss-reader",
                                                                         "thread_died:uplink"}
        assert agent.running
    finally:
        feeder.stop()
        agent.kill9()
        dispatch.close()


def test_a_thread_that_cannot_come_back_stops_the_watchdog(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(0.2)
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start(env={"NOTIFY_SOCKET": sock.getsockname(), "WATCHDOG_USEC": "900000"})

    def pings(seconds: float) -> int:
        count, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                count += sock.recv(4096).count(b"WATCHDOG=1")
        return count

    try:
        assert pings(1.5) >= 3
        assert agent.ask("debug_raise", thread="gnss-reader", permanent=True)[-1]["ok"]
        assert pings(3) >= 3, "a dead thread that is being restarted does not stop the pings yet"
        silent_from = None
        deadline = time.monotonic() + 30
        while silent_from is None and time.monotonic() < deadline:
            if pings(2) == 0:
                silent_from = time.monotonic()
        assert silent_from is not None, "the pings never stopped"
        assert pings(3) == 0, "and they stay stopped"
        assert agent.running  # systemd, not the daemon, restarts the service
    finally:
        agent.kill9()
        sock.close()
