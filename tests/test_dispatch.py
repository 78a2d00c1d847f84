"""The example dispatcher (`patrol-agent watch`, `patrol-agent dispatch ack|clear`) against a real mosquitto
and a real agent: own client ids, re-subscription after a broker restart, replies waited for, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config
from tests.support.broker import Mosquitto, free_port
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 40) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


class Lines:
    """A process's output, read on a thread, that a test can wait on."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


class Watch:
    def __init__(self, port: int, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "watch", "--broker",
                                      f"mqtt://127.0.0.1:{port}", *extra], cwd=ROOT, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)
        assert self.err.wait_for("--- connected", 15), self.err.lines

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(10)


def publish(port: int, vehicle: str, state: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-vehicle-{vehicle}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    payload = {"kind": "status", "vehicle_id": vehicle, "seq": 1, "state": state,
               "time": datetime.now(UTC).isoformat()}
    client.publish(f"patrol/{vehicle}/status", json.dumps(payload), qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def test_watch_survives_a_broker_restart_and_prints_what_follows(broker: Mosquitto) -> None:
    watch = Watch(broker.port)
    try:
        publish(broker.port, "PV-BEFORE", "online")
        assert watch.out.wait_for("PV-BEFORE", 10), watch.out.lines
        broker.stop()
        time.sleep(1.0)
        broker.start()  # the same port, a fresh broker: no session of the watcher's survives
        assert watch.err.wait_for("--- reconnected", 20), watch.err.lines
        publish(broker.port, "PV-AFTER", "online")
        assert watch.out.wait_for("PV-AFTER", 10), (watch.out.lines, watch.err.lines)
    finally:
        code = watch.stop()
    assert code == 0
    assert not any("Traceback" in line for line in watch.err.lines), watch.err.lines


def test_a_dispatch_command_does_not_kick_the_watcher_off(broker: Mosquitto) -> None:
    watch = Watch(broker.port)
    try:
        done = cli("dispatch", "clear", "PV-NOBODY", "some-alert", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                   "--timeout", "1")
        publish(broker.port, "PV-LATER", "online")
        assert watch.out.wait_for("PV-LATER", 10), (watch.out.lines, watch.err.lines)
    finally:
        watch.stop()
    assert done.returncode == 3, done.stderr
    assert not any("connection lost" in line for line in watch.err.lines), watch.err.lines


@pytest.fixture
def vehicle(tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    collector = Collector(broker.port, "patrol/PV-TEST-1/status", client_id="dispatch-wait-online")
    try:
        collector.wait_for(lambda m: any(b'"online"' in x.payload for x in m), timeout=15)
        yield agent
    finally:
        collector.close()
        feeder.stop()
        agent.kill9()


def raise_alert(agent: AgentProcess) -> str:
    assert agent.ask("sim_press", name="driver")[-1]["ok"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        emergency = agent.ask("alert")[-1].get("emergency")
        if emergency:
            return str(emergency["alert_id"])
        time.sleep(0.1)
    raise TimeoutError("no alert")


def test_ack_and_clear_go_on_the_cmd_topic_and_show_the_vehicle_reply(
        vehicle: AgentProcess, broker: Mosquitto) -> None:
    seen = Collector(broker.port, "patrol/PV-TEST-1/#", client_id="test-dispatch-spy")
    try:
        alert_id = raise_alert(vehicle)
        url = f"mqtt://127.0.0.1:{broker.port}"
        before = datetime.now(UTC)
        ack = cli("dispatch", "ack", "PV-TEST-1", alert_id, "--broker", url, "--operator", "op-7")
        clear = cli("dispatch", "clear", "PV-TEST-1", alert_id, "--broker", url)
        after = datetime.now(UTC)
        state = vehicle.ask("alert")[-1]
        messages = seen.wait_quiet(0.5)
    finally:
        seen.close()
    assert ack.returncode == 0, ack.stdout + ack.stderr
    assert ack.stdout.startswith("PV-TEST-1 ok: ack_alert"), ack.stdout
    assert clear.returncode == 0, clear.stdout + clear.stderr
    assert "PV-TEST-1 ok: clear_alert" in clear.stdout
    commands = [m.json() for m in messages if m.topic.endswith("/cmd")]
    assert [c["verb"] for c in commands] == ["ack_alert", "clear_alert"]
    assert commands[0]["args"] == {"alert_id": alert_id, "operator": "op-7"}
    for command in commands:  # stamped from the real clock, valid for a minute
        issued = datetime.fromisoformat(command["issued_at"].replace("Z", "+00:00"))
        expires = datetime.fromisoformat(command["expires_at"].replace("Z", "+00:00"))
        assert before.replace(microsecond=0) <= issued <= after and (expires - issued).total_seconds() == 60
    replies = {m.json()["command_id"]: m.json() for m in messages if m.topic.endswith("/reply")}
    assert all(replies[c["command_id"]]["ok"] for c in commands)
    assert state["emergency"] is None, "the clear closed the alert"
    states = [m.json()["state"] for m in messages if m.topic.endswith("/alert")]
    assert "acknowledged" in states and states[-1] == "cleared", states


def test_a_command_the_vehicle_refuses_exits_1_with_its_reason(vehicle: AgentProcess, broker: Mosquitto) -> None:
    alert_id = raise_alert(vehicle)
    done = cli("dispatch", "ack", "PV-TEST-1", alert_id, "--broker", f"mqtt://127.0.0.1:{broker.port}",
               "--operator", "x" * 65)  # longer than the vehicle accepts
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("PV-TEST-1 refused: ack_alert") and "operator" in done.stdout, done.stdout


def test_clearing_an_unknown_alert_exits_1(vehicle: AgentProcess, broker: Mosquitto) -> None:
    done = cli("dispatch", "clear", "PV-TEST-1", "no-such-alert", "--broker", f"mqtt://127.0.0.1:{broker.port}")
    assert done.returncode == 1, done.stdout + done.stderr


def test_no_reply_in_time_exits_3(broker: Mosquitto) -> None:
    began = time.monotonic()
    done = cli("dispatch", "ack", "PV-OFFLINE", "a1", "--broker", f"mqtt://127.0.0.1:{broker.port}",
               "--timeout", "1.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no reply from PV-OFFLINE within 1.5 s" in done.stderr
    assert time.monotonic() - began < 15


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--broker", "mqtt://127.0.0.1:{free}"], 1, "connection refused"),
    (["--broker", "mqtts://127.0.0.1:{free}", "--ca", "/nonexistent/ca.crt"], 2,
     "--ca /nonexistent/ca.crt: no such file"),
    (["--broker", "http://example.org"], 2, "bad broker URL"),
    (["--broker", "mqtt://127.0.0.1:99999"], 2, "bad broker URL"),
    (["--broker", "mqtt://user:secret@127.0.0.1:{free}"], 2, "credentials in the broker URL are refused"),
    (["--password-file", "/nonexistent/pw"], 2, "--password-file /nonexistent/pw"),
])
def test_ordinary_errors_are_one_line_and_an_exit_code(args: list[str], code: int, message: str) -> None:
    free = str(free_port())
    for tool in (["watch"], ["dispatch", "clear", "PV-1", "a1"]):
        done = cli(*tool, *[a.replace("{free}", free) for a in args])
        assert done.returncode == code, (tool, done.stderr)
        assert "Traceback" not in done.stderr and message in done.stderr, (tool, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "secret" not in done.stderr


def test_no_password_on_the_command_line() -> None:
    done = cli("watch", "--password", "s3cret")
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwords = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwords), "dispatcher", "right-one"], check=True,
                   capture_output=True)
    passwords.chmod(0o600)
    port = free_port()
    server = Mosquitto(tmp_path / "auth-broker", port=port,
                       extra_conf=f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n")
    server.start()
    yield server
    server.kill()


def test_the_password_comes_from_a_file_or_the_environment(tmp_path: Path, auth_broker: Mosquitto) -> None:
    url = f"mqtt://127.0.0.1:{auth_broker.port}"
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("right-one\n")
    bad.write_text("wrong\n")
    base = ["dispatch", "ack", "PV-1", "a1", "--broker", url, "--username", "dispatcher", "--timeout", "0.5"]
    from_file = cli(*base, "--password-file", str(good))
    from_env = cli(*base, env={"PATROL_DISPATCH_PASSWORD": "right-one"})
    refused = cli(*base, "--password-file", str(bad))
    assert from_file.returncode == 3, from_file.stderr  # connected and subscribed: only the vehicle is missing
    assert from_env.returncode == 3, from_env.stderr
    assert refused.returncode == 1 and "did not accept the connection" in refused.stderr, refused.stderr
    assert "wrong" not in refused.stderr


def test_every_run_has_a_client_id_of_its_own() -> None:
    from agent.dispatch import new_client_id

    ids = {new_client_id("watch") for _ in range(50)} | {new_client_id("dispatch") for _ in range(50)}
    assert len(ids) == 100
    assert all(len(i) <= 23 for i in ids)


def test_commands_are_built_from_the_clock() -> None:
    from agent.commands import parse
    from agent.dispatch import build_command

    command: dict[str, Any] = build_command("PV-1", "ack_alert", {"alert_id": "a1", "operator": "op"}, valid_s=60)
    parsed, args = parse(json.dumps(command).encode(), retained=False, vehicle_id="PV-1", now=datetime.now(UTC))
    assert parsed.verb == "ack_alert" and args.alert_id == "a1"  # type: ignore[attr-defined]
