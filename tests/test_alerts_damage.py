"""Damage to the alerts database is reported, never silent: an open emergency lost with it is a fault.

The real daemon (``patrol-agent run``) with an open emergency and the broker
down is killed with kill -9; the alerts database or its WAL is then damaged
the way a failing card or a careless technician damages it, and the daemon
started again. It must report the loss (``outbox_corrupt`` naming the file,
in ``status`` at once and at dispatch when the broker is back), keep a copy
of what it found for a technician, and go on working: a new press reaches
dispatch. A kill -9 without damage must raise no such fault.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

DB = "outbox-alerts.sqlite"



def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(3)
    for _ in range(16):  # in the middle third
        data[rng.randrange(len(data) // 3, 2 * len(data) // 3)] ^= 0xFF
    path.write_bytes(bytes(data))


def _zero_tail(path: Path) -> None:
    data = bytearray(path.read_bytes())
    n = min(4096, len(data))
    data[len(data) - n:] = bytes(n)
    path.write_bytes(bytes(data))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _zeroed(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


DAMAGE = {"wal_half": (f"{DB}-wal", _half), "wal_flip": (f"{DB}-wal", _flip),
          "wal_zero_tail": (f"{DB}-wal", _zero_tail), "db_empty": (DB, _empty), "db_zeroed": (DB, _zeroed)}


def _status(agent: AgentProcess) -> dict[str, Any]:
    return dict(agent.ask("status")[-1]["status"])


def _emergency(agent: AgentProcess) -> str | None:
    reply = agent.ask("alert")[-1]
    return (reply["emergency"] or {}).get("alert_id")


def _open_emergency_then_kill(agent: AgentProcess, broker: Mosquitto) -> str:
    agent.start()
    broker.stop()
    agent.ask("sim_press", name="driver")
    agent.ask("sim_release", name="driver")
    alert = _emergency(agent)
    assert alert is not None
    time.sleep(1.5)  # a few emergency positions: the state as a car has it
    agent.kill9()
    return alert


def _corrupt_events(dispatch: Collector) -> list[dict[str, Any]]:
    return [m.json() for m in dispatch.messages if m.topic.endswith("/event")
            and m.json().get("event") == "fault" and m.json().get("name") == "outbox_corrupt"]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_to_the_alerts_database_is_reported_and_the_daemon_goes_on(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, damage: str) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__emergency_interval_s=0.3)
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    state = tmp_path / "state"
    try:
        _open_emergency_then_kill(agent, broker)
        name, hurt = DAMAGE[damage]
        assert (state / name).stat().st_size > 0, f"nothing to damage in {name}"
        before = {p.name for p in state.iterdir()}
        hurt(state / name)
        agent.start()
        faults = _status(agent)["faults"]
        restored = _emergency(agent)
        assert "outbox_corrupt" in faults, f"{damage}: the loss is silent: faults {faults}, emergency {restored}"
        broker.start()
        dispatch.wait_for(lambda m: bool(_corrupt_events(dispatch)), timeout=15)
        agent.ask("sim_press", name="driver")
        agent.ask("sim_release", name="driver")
        alert = _emergency(agent)
        dispatch.wait_for(lambda m: any(x.topic.endswith("/alert") and x.json()["alert_id"] == alert for x in m),
                          timeout=15)
        assert agent.running
    finally:
        feeder.stop()
        agent.kill9()
    detail = _corrupt_events(dispatch)[0]["detail"]
    assert DB in detail, detail
    kept = [p for p in state.iterdir() if p.name not in before and p.name.startswith(DB)
            and p.stat().st_size > 0]
    files = sorted(p.name for p in state.iterdir())
    assert kept, f"{damage}: the damaged files were not kept for a technician: {files}"
    assert alert is not None


def test_a_plain_kill_9_raises_no_damage_fault(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__emergency_interval_s=0.3)
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        kept = _open_emergency_then_kill(agent, broker)
        agent.start()
        faults = _status(agent)["faults"]
        restored = _emergency(agent)
        broker.start()
        dispatch.wait_for(lambda m: any(x.topic.endswith("/alert") and x.json()["alert_id"] == kept for x in m),
                          timeout=15)
        agent.kill9()
        agent.start()  # and a second restart, after the first one's own writes
        again = _status(agent)["faults"]
    finally:
        feeder.stop()
        agent.kill9()
    assert restored == kept
    assert "outbox_corrupt" not in faults and "outbox_corrupt" not in again, (faults, again)
    assert not _corrupt_events(dispatch)


def _alerts_db(path: Path) -> tuple[Any, Any]:
    """A real WAL database as the agent keeps it, with its mark written after each commit."""
    import sqlite3

    from agent.wal_mark import WalMark

    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("CREATE TABLE t (x BLOB)")
    mark = WalMark(path)
    for _ in range(3):
        db.execute("INSERT INTO t VALUES (randomblob(3000))")
        mark.write()
    return db, mark


def test_a_torn_tail_after_the_last_commit_is_not_a_loss(tmp_path: Path) -> None:
    db, mark = _alerts_db(tmp_path / "a.sqlite")
    noted = mark.read()
    assert noted is not None and noted[1] >= 3
    wal = tmp_path / "a.sqlite-wal"
    size = wal.stat().st_size
    db.execute("INSERT INTO t VALUES (randomblob(3000))")  # a commit the mark does not know of yet: then torn
    with wal.open("r+b") as f:
        f.truncate(size + (wal.stat().st_size - size) // 2)
    assert mark.wal_problem(noted) is None
    db.close()


@pytest.mark.parametrize("hurt", [_half, _flip, _zero_tail])
def test_a_wal_that_lost_committed_frames_is_found(tmp_path: Path, hurt: Any) -> None:
    db, mark = _alerts_db(tmp_path / "a.sqlite")
    noted = mark.read()
    assert noted is not None
    hurt(tmp_path / "a.sqlite-wal")
    assert mark.wal_problem(noted) is not None
    db.close()


def test_a_technician_reading_the_alerts_database_while_the_daemon_runs_never_crashes_it(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    """Another process opens and closes the alerts database between the daemon's alert commits (sqlite3 on
    the unit, a backup): the daemon must keep its SQLite locks (closing any descriptor of the WAL index in
    the daemon would drop them, and the reader would then reset the index under the daemon: SIGBUS)."""
    import sqlite3

    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path))
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    db = tmp_path / "state" / "outbox-alerts.sqlite"
    try:
        broker.stop()  # alerts stay in the database: every commit is durable and noted
        for _ in range(40):
            assert agent.first_reply("panic_test")["stage"] == "accepted"
            reader = sqlite3.connect(db)
            reader.execute("SELECT count(*) FROM outbox").fetchall()
            reader.close()
            time.sleep(0.05)
            assert agent.running, f"the daemon died: exit {agent.proc.poll() if agent.proc else None}"
    finally:
        feeder.stop()
        agent.kill9()
