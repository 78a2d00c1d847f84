"""The running daemon's real inputs under hostile and arbitrary input: it never exits, never moves the car.

A real ``patrol-agent run`` process on a pty receiver and a real broker.
Every input it has is driven: the ``cmd`` and ``alert/ack`` topics over
MQTT, the control socket, and the GNSS pty; with hypothesis-generated
arbitrary bytes and well-formed JSON with wrong content (at least 500
examples per input), and with the specific cases that crashed the daemon
before: timestamps without a zone, a ZDA of year 9999, NaN and Infinity in
every numeric NMEA field.
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.control import MAX_CLIENTS, SOCKET_NAME
from tests.support.agent_proc import AgentProcess, agent_config, epoch_at, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.nmea import sentence
from tests.support.pty_gnss import PtyGnss

VEHICLE = "PV-TEST-1"
EXAMPLES = 500
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
COMMAND_KEYS = ["command_id", "vehicle_id", "verb", "args", "issued_at", "expires_at", "extra"]
ACK_KEYS = ["alert_id", "action", "operator", "note", "extra"]


def wrong_json(keys: list[str]) -> st.SearchStrategy[bytes]:
    """JSON that looks like the message (its keys, with plausible and implausible values)."""
    values = st.one_of(JSON, st.sampled_from([VEHICLE, "ping", "ack_alert", "set_reporting", "acknowledge",
                                              "clear", "2026-11-29T00:00:00", "9999-12-31T23:59:59Z"]))
    return st.dictionaries(st.sampled_from(keys), values, max_size=len(keys)).map(lambda d: json.dumps(d).encode())


def any_input(keys: list[str]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=6000), wrong_json(keys), JSON.map(lambda v: json.dumps(v).encode()))


def fuzz(test: Any) -> Any:
    return settings(max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])(test)


@pytest.fixture
def daemon(tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    yield agent
    agent.kill9()


@pytest.fixture
def dispatch(broker: Mosquitto) -> Iterator[Collector]:
    collector = Collector(broker.port, "patrol/#", client_id="hostile-dispatch")
    yield collector
    collector.close()


@pytest.fixture
def attacker(broker: Mosquitto) -> Iterator[mqtt.Client]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hostile-publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def online(dispatch: Collector) -> None:
    dispatch.wait_for(lambda m: any(x.topic.endswith("/status") and b"online" in x.payload for x in m))


def control(agent: AgentProcess, payload: bytes) -> bytes:
    """One raw request on the control socket; whatever comes back until the daemon hangs up."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(agent.runtime_dir / SOCKET_NAME))
        sock.sendall(payload + b"\n")
        got = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                got += chunk
        return got


def finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def test_arbitrary_input_on_every_input_never_stops_the_daemon_nor_gives_a_position(
        daemon: AgentProcess, dispatch: Collector, attacker: mqtt.Client, gnss_pty: PtyGnss) -> None:
    online(dispatch)

    @fuzz
    @given(any_input(COMMAND_KEYS), st.booleans())
    def commands(payload: bytes, retain: bool) -> None:
        attacker.publish(f"patrol/{VEHICLE}/cmd", payload, qos=1, retain=retain).wait_for_publish(5)

    @fuzz
    @given(any_input(ACK_KEYS))
    def acks(payload: bytes) -> None:
        attacker.publish(f"patrol/{VEHICLE}/alert/ack", payload, qos=1).wait_for_publish(5)

    harmless = st.sampled_from(["status", "alert", "", "cmd", "status\n"]) | st.text(max_size=20).filter(
        lambda c: not c.startswith(("debug_", "sim_", "panic_")))

    @fuzz
    @given(st.one_of(st.binary(max_size=3000).filter(lambda b: b"\n" not in b[:1]),
                     st.fixed_dictionaries({"cmd": harmless}, optional={"args": JSON, "name": JSON}).map(
                         lambda d: json.dumps(d).encode())))
    def requests(payload: bytes) -> None:
        control(daemon, payload)

    @fuzz
    @given(st.binary(max_size=2000))
    def receiver(data: bytes) -> None:
        gnss_pty.write(data)

    for drive in (commands, acks, requests, receiver):
        drive()
        assert daemon.running, f"the daemon exited during {drive.__name__}"
    attacker.publish(f"patrol/{VEHICLE}/cmd", b"", qos=1, retain=True).wait_for_publish(5)  # no retained leftovers
    time.sleep(1.0)
    reply = daemon.ask("status")[-1]
    assert reply["ok"] and daemon.running
    assert all(p["fix"] is None for p in positions(dispatch.messages)), "a position from invalid input"
    assert "internal_error" not in reply["status"]["faults"], reply["status"]["faults_detail"]


def test_local_times_in_a_command_are_rejected_with_a_reason(
        daemon: AgentProcess, dispatch: Collector, attacker: mqtt.Client) -> None:
    online(dispatch)
    now = datetime.now(UTC)
    body = {"command_id": "c-local", "vehicle_id": VEHICLE, "verb": "ping", "args": {},
            "issued_at": now.replace(tzinfo=None).isoformat(),
            "expires_at": (now + timedelta(minutes=5)).replace(tzinfo=None).isoformat()}
    attacker.publish(f"patrol/{VEHICLE}/cmd", json.dumps(body), qos=1).wait_for_publish(5)
    got = dispatch.wait_for(lambda m: any(x.topic.endswith("/reply") and b"c-local" in x.payload for x in m))
    reply = next(x.json() for x in got if x.topic.endswith("/reply") and b"c-local" in x.payload)
    assert reply["ok"] is False and "timezone" in reply["detail"], reply
    assert daemon.running and daemon.ask("status")[-1]["ok"]


NUMERIC_GGA = {1: "4241.8627", 3: "02319.3140", 5: "1", 6: "09", 7: "0.9", 8: "560.0", 10: "37.8"}
NUMERIC_RMC = {0: "120000.00", 2: "4241.8627", 4: "02319.3140", 6: "20.0", 7: "90.0", 8: "011126"}
NON_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999"]


def poisoned() -> list[str]:
    gga = ["GPGGA", "120000.00", "4241.8627", "N", "02319.3140", "E", "1", "09", "0.9", "560.0", "M", "37.8", "M",
           "", ""]
    rmc = ["GPRMC", "120000.00", "A", "4241.8627", "N", "02319.3140", "E", "20.0", "90.0", "011126", "", "", "A"]
    lines = []
    for fields, numeric in ((gga, NUMERIC_GGA), (rmc, NUMERIC_RMC)):
        for index in numeric:
            for bad in NON_FINITE:
                changed = list(fields)
                changed[index + 1] = bad
                lines.append(sentence(",".join(changed)))
    lines.append(sentence("GPZDA,120000.00,01,01,9999,00,00"))
    lines.append(sentence("GPZDA,120001.00,31,12,9999,00,00") + sentence(
        "GPGGA,120001.00,4241.8627,N,02319.3140,E,1,09,0.9,560.0,M,37.8,M,,"))
    return lines


def test_non_finite_numbers_and_year_9999_from_the_receiver_are_dropped_and_counted(
        daemon: AgentProcess, dispatch: Collector, gnss_pty: PtyGnss) -> None:
    online(dispatch)
    before = daemon.ask("status")[-1]["status"]["gnss"]
    lines = poisoned()
    for line in lines:
        gnss_pty.write(line)
        time.sleep(0.005)
    time.sleep(0.5)
    when = datetime.now(UTC).replace(microsecond=0)
    for i in range(3):  # then a good receiver again: the daemon still turns epochs into positions
        gnss_pty.write(epoch_at(when + timedelta(seconds=i), 42.6977))
        time.sleep(0.2)
    got = dispatch.wait_for(lambda m: any(p["fix"] is not None for p in positions(m)), timeout=10)
    status = daemon.ask("status")[-1]["status"]
    assert daemon.running
    dropped = status["gnss"]["invalid_sentences"] - before["invalid_sentences"]
    assert dropped >= len(lines) - 1, (dropped, len(lines))
    for report in positions(got):
        assert finite(report), report
        fix = report["fix"]
        assert fix is None or (fix["lat"] != 0 and abs(fix["lat"] - 42.6977) < 0.01), report
        assert not report["time"].startswith("9999"), report
    assert "internal_error" not in status["faults"], status["faults_detail"]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_a_flood_of_silent_local_clients_neither_grows_the_daemon_nor_locks_technicians_out(
        daemon: AgentProcess) -> None:
    """300 local connections that never send a line, and one that drips a byte a second: the daemon
    holds a bounded number of them (the rest are told "busy" at once), lets the silent ones go after
    the request deadline, and answers a technician's status again."""
    assert daemon.proc is not None
    before = threads_of(daemon.proc.pid)
    path = str(daemon.runtime_dir / SOCKET_NAME)
    silent = []
    for _ in range(300):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        silent.append(sock)
    dripping = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dripping.settimeout(1)
    try:
        time.sleep(1.0)
        during = threads_of(daemon.proc.pid)
        turned_away = silent[-1]
        turned_away.settimeout(5)
        busy = json.loads(turned_away.recv(4096).split(b"\n")[0])
        for sock in silent:
            sock.close()
        time.sleep(1.0)
        dripping_cut = False
        dripping.connect(path)
        with contextlib.suppress(OSError):
            for _ in range(15):
                dripping.sendall(b"{")
                time.sleep(1)
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    if dripping.recv(4096, socket.MSG_DONTWAIT):
                        dripping_cut = True
                        break
        reply = daemon.ask("status", timeout=10)
    finally:
        for sock in (*silent, dripping):
            sock.close()
    assert during - before <= MAX_CLIENTS + 4, f"{during - before} more threads for 300 silent clients"
    assert busy["ok"] is False and "busy" in busy["error"]
    assert dripping_cut, "a client dripping a byte a second is answered and let go"
    assert reply and reply[-1]["ok"] is True, reply
    assert daemon.running


def test_deeply_nested_json_on_the_control_socket_is_a_bad_request_not_a_traceback(daemon: AgentProcess) -> None:
    before = len(daemon.log.read_text().splitlines())
    answers = [control(daemon, b'{"cmd": "status", "x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
               for _ in range(20)]
    time.sleep(0.5)
    lines = daemon.log.read_text().splitlines()[before:]
    assert all(json.loads(a.split(b"\n")[0])["ok"] is False for a in answers), answers[:1]
    assert not any("Traceback" in line for line in lines), "\n".join(lines[:30])
    assert daemon.ask("status")[-1]["ok"] is True
