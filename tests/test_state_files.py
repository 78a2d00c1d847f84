"""The outbox trusts nothing it finds on disk: forged rows, planted symlinks, loose modes, deleted data.

Rows and links are planted with the tools an intruder with access to the
state dir would use (``sqlite3``, ``ln -s``); the daemon is the real
``patrol-agent run`` against a real mosquitto.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox import Outbox
from tests.support.agent_proc import ROOT, AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

VEHICLE = "PV-TEST-1"



def umask_022() -> None:
    os.umask(0o022)


def first_run(agent: AgentProcess) -> None:
    """Start and stop cleanly once: the databases exist, with their schema."""
    agent.start()
    assert agent.terminate() == 0


def test_forged_rows_are_not_published_and_are_reported(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    first_run(agent)
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        top = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
        envelope = {"schema_version": 2, "vehicle_id": VEHICLE, "msg_id": "forged", "time": "2026-11-30T10:00:00.000Z",
                    "time_source": "gnss"}
        position = {**envelope, "kind": "position", "reason": "interval", "fix": None, "gnss_mode": 1, "alert_id": None}
        forged: list[tuple[str, Any]] = [
            ("patrol/PV-OTHER/position", {**position, "vehicle_id": "PV-OTHER"}),  # another vehicle's topic
            (f"patrol/{VEHICLE}/cmd", {"verb": "ping"}),  # not a topic the vehicle publishes on
            (f"patrol/{VEHICLE}/sneaky", position),  # an unknown kind
            (f"patrol/{VEHICLE}/position", "FORGED-not-json"),  # not JSON
            (f"patrol/{VEHICLE}/position", {**position, "kind": "alert"}),  # JSON of another kind
            (f"patrol/{VEHICLE}/position", {**position, "fix": {"lat": 999}}),  # does not validate
            ("other-prefix/x", position),
        ]
        for i, (topic, body) in enumerate(forged, start=1):
            payload = body.encode() if isinstance(body, str) else json.dumps(
                {**body, "seq": i, "boot": 999, "msg_id": f"FORGED-{i}"}, separators=(",", ":")).encode()
            db.execute("INSERT INTO outbox (id, priority, topic, payload, accepted_at) VALUES (?,?,?,?,?)",
                       (top + (1 << 40) + i, Priority.POSITION, topic, payload, time.time()))
    with sqlite3.connect(tmp_path / "state" / "outbox-alerts.sqlite") as db:  # and an alert of another vehicle
        body = {**envelope, "vehicle_id": "PV-OTHER", "msg_id": "FORGED-alert", "kind": "alert", "boot": 1,
                "seq": 1, "alert_id": "FORGED", "state": "raised", "trigger": "driver",
                "raised_at": "2026-11-30T10:00:00.000Z", "position": {"source": "none"}}
        db.execute("INSERT INTO outbox (id, priority, topic, payload, accepted_at) VALUES (?,?,?,?,?)",
                   ((1 << 32) + 1, Priority.ALERT, f"patrol/{VEHICLE}/alert", json.dumps(body).encode(), time.time()))
    forged.append(("alert", body))
    agent.start()
    try:
        dispatch.wait_for(lambda m: any(x.topic.endswith("/event") and b"outbox_rejected" in x.payload
                                                 for x in m), timeout=15)
        time.sleep(1.0)
        status = agent.ask("status")[-1]["status"]
    finally:
        agent.kill9()
    published = [m for m in dispatch.messages if b"FORGED" in m.payload or not m.topic.startswith(f"patrol/{VEHICLE}/")]
    assert not published, [(m.topic, m.payload[:80]) for m in published]
    fault = [x.json() for x in dispatch.messages if x.topic.endswith("/event") and b"outbox_rejected" in x.payload][-1]
    assert fault["event"] == "fault" and f"{len(forged)} stored" in fault["detail"], fault
    assert status["outbox"]["rejected"] == len(forged)
    with sqlite3.connect(tmp_path / "state" / "outbox.sqlite") as db:
        assert db.execute("SELECT count(*) FROM outbox WHERE id > ?", (top + (1 << 40),)).fetchone()[0] == 0


STATE_FILES = ["outbox.sqlite", "outbox.sqlite-wal", "outbox.sqlite-shm", "outbox.sqlite-journal",
               "outbox-alerts.sqlite", "outbox-alerts.sqlite-wal", "outbox-alerts.sqlite-shm",
               "outbox.sqlite.boot", "outbox-alerts.sqlite.mark", "outbox.sqlite.log", "outbox.sqlite.seq",
               "outbox.sqlite.seq.tmp"]


def test_a_planted_symlink_is_never_followed(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Every file the daemon keeps, planted in advance as a symlink to a file outside the state dir."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    outside = tmp_path / "outside"
    outside.mkdir()
    victims = {}
    for name in STATE_FILES:
        victim = outside / f"victim-{name}"
        victim.write_text(f"precious {name}\n")
        (state / name).symlink_to(victim)
        victims[name] = victim
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=0.05,
                       reporting__stopped_interval_s=0.05)
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    agent.start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 3)
        broker.stop()  # a backlog: the window log and the database are written
        agent.first_reply("panic_test")
        time.sleep(3)
        broker.start()
        dispatch.wait_for(lambda m: any(x.topic.endswith("/alert") for x in m), timeout=15)
        status = agent.ask("status")[-1]["status"]
        assert agent.terminate() == 0
    finally:
        feeder.stop()
        agent.kill9()
    changed = {name: v.read_text() for name, v in victims.items() if v.read_text() != f"precious {name}\n"}
    assert not changed, f"written through a planted symlink: {sorted(changed)}"
    assert "state_file_refused" in status["faults"], status["faults"]
    left = [p.name for p in state.iterdir() if p.is_symlink() and p.name in STATE_FILES]
    assert not left, f"still symlinks where the daemon keeps its files: {left}"


def test_state_files_are_0600_and_the_state_dir_0700_whatever_the_umask(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=0.05,
                       reporting__stopped_interval_s=0.05)
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    old = os.umask(0o022)
    try:
        agent.start()
        broker.stop()  # a backlog, so that every file is created
        agent.first_reply("panic_test")
        time.sleep(3)
        found = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "state").iterdir()}
        dir_mode = stat.S_IMODE((tmp_path / "state").stat().st_mode)
    finally:
        os.umask(old)
        feeder.stop()
        agent.kill9()
    loose = {name: oct(mode) for name, mode in found.items() if mode & 0o077}
    assert not loose, f"state files readable by others: {loose}"
    assert {"outbox.sqlite", "outbox-alerts.sqlite", "outbox-alerts.sqlite-wal", "outbox.sqlite.log",
            "outbox.sqlite.boot"} <= set(found), found
    assert dir_mode == 0o700, oct(dir_mode)


@pytest.mark.parametrize("problem", ["group-writable", "world-writable", "another owner"])
def test_a_state_dir_that_is_not_the_daemons_own_is_refused(tmp_path: Path, problem: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    if problem == "group-writable":
        state.chmod(0o770)
    elif problem == "world-writable":
        state.chmod(0o1777)
    else:
        state.chmod(0o700)
        os.chown(state, 65534, 65534)
    cfg = agent_config(tmp_path, 1, tmp_path / "gnss")
    agent = AgentProcess(tmp_path, cfg)
    try:
        done = subprocess.run([sys.executable, "-m", "agent.cli", "run", "--config", str(agent.config_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the daemon ran with a state dir that is not its own")
    assert done.returncode == 2, done.stderr
    assert str(state) in done.stderr and "state_dir" in done.stderr, done.stderr
    assert not (state / "outbox.sqlite").exists()


class Worker:
    """What the checkpoint thread needs of its supervisor."""

    def beat(self) -> None:
        pass


def test_acknowledged_rows_do_not_stay_readable_in_the_files(tmp_path: Path) -> None:
    """While the outbox runs (no close), once its deletes are committed and checkpointed: the deleted
    rows' stored bytes are nowhere in the database, its WAL or its free pages."""
    clock = [1_800_000_000.0]
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(), clock=lambda: clock[0])
    box.open()
    checkpointer = threading.Thread(target=box.run_checkpoints, args=(Worker(),), daemon=True)
    checkpointer.start()
    for _ in range(300):
        seq = box.seq.take()
        box.accept(seq, Priority.POSITION, "t", b'{"secret":"position-of-the-car-SECRET-%06d"}' % seq)
    box.flush()
    with sqlite3.connect(tmp_path / "outbox.sqlite") as db:
        stored = [bytes(r[0]) for r in db.execute("SELECT payload FROM outbox")]
    assert len(stored) == 300
    while rows := box.lease(100):
        box.ack([r.id for r in rows])
    box.flush()  # the deletes committed
    for _ in range(3):
        clock[0] += 11.0
        box.tick()  # a checkpoint is due
        time.sleep(1.5)
    content = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    readable = [blob for blob in stored if blob[-16:] in content]
    box.close()
    checkpointer.join(5)
    assert not readable, f"{len(readable)} acknowledged rows still readable in the state files"
