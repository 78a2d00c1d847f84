"""The alert lifecycle is durable both ways: across kill -9, after a clear, for a test alarm nobody answers.

The real daemon (``patrol-agent run``) on a pty receiver and a real
mosquitto; dispatch is a subscriber that clears alerts over MQTT. The LED is
read from the daemon (``patrol-agent`` control socket ``alert``: the state
the officer's LED shows).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector, Received
from tests.support.pty_gnss import PtyGnss
from tests.support.storage_faults import send_clear

PRESS_NOW = [{"name": "driver", "pin": 17, "trigger": "press", "debounce_ms": 0}]


def alerts(messages: list[Received]) -> list[dict[str, Any]]:
    return [m.json() for m in messages if m.topic.endswith("/alert")]


@pytest.fixture
def dispatch(broker: Mosquitto, request: pytest.FixtureRequest) -> Any:
    collector = Collector(broker.port, "patrol/#", client_id=f"dispatch-{request.node.name}"[:60])
    yield collector
    collector.close()


def emergency(agent: AgentProcess) -> tuple[str | None, str]:
    """The daemon's open emergency (alert id or None) and what its LED shows."""
    reply = agent.ask("alert")[-1]
    return (reply["emergency"] or {}).get("alert_id"), reply["feedback"]


def drained(agent: AgentProcess, timeout: float = 15.0) -> None:
    """Until the link is up and nothing waits in the outbox (dispatch has all that is durable)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent.ask("status")[-1]["status"]
        if status["link"]["connected"] and status["outbox"]["depth"] == 0 and not status["outbox"]["in_flight"]:
            time.sleep(0.3)
            return
        time.sleep(0.05)
    raise TimeoutError("the outbox did not drain")


def test_after_a_clear_and_kill_9_there_is_no_emergency(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=60,
                       reporting__stopped_interval_s=60, reporting__emergency_interval_s=0.3)
    agent = AgentProcess(tmp_path, cfg)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    agent.start()
    try:
        agent.ask("sim_press", name="driver")
        alert = alerts(dispatch.wait_for(lambda m: len(alerts(m)) >= 1))[0]
        agent.ask("sim_release", name="driver")
        dispatch.wait_for(lambda m: sum(1 for p in positions(m) if p["alert_id"]) >= 2)
        send_clear(broker.port, dispatch, alert["alert_id"])  # returns once the vehicle reported it cleared
        agent.kill9()
        killed = time.monotonic()
        agent.start()
        time.sleep(3.0)  # ten emergency positions' worth
        restored, led = emergency(agent)
    finally:
        feeder.stop()
        agent.kill9()
    after = [m.json() for m in dispatch.messages if m.at > killed]
    assert restored is None, "a cleared emergency came back after the restart"
    assert led == "idle", f"the LED shows {led!r} after a clear and a restart"
    assert not [p for p in after if p["kind"] == "position" and p["alert_id"]], "emergency positions after the clear"
    assert not [a for a in after if a["kind"] == "alert" and a["state"] != "cleared"], "the alert was re-published"


def test_a_kill_0_to_10_ms_after_a_raise_never_restores_an_older_emergency(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """50 rounds: press, kill -9 0-10 ms later, restart; the vehicle's emergency must be the alert that
    reached dispatch from this round (or none, if the kill came before the alert was durable)."""
    rng = random.Random(20261130)
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=60,
                       reporting__stopped_interval_s=60, panic__republish_s=60)
    cfg["inputs"]["panic_buttons"] = PRESS_NOW
    agent = AgentProcess(tmp_path, cfg)
    outcomes = {"restored": 0, "none": 0}
    wrong: list[str] = []
    try:
        for round_ in range(50):
            agent.start()
            seen = {a["alert_id"] for a in alerts(dispatch.messages)}
            agent.ask("sim_press", name="driver")
            time.sleep(rng.uniform(0.0, 0.010))
            agent.kill9()
            agent.start()
            drained(agent)
            restored, led = emergency(agent)
            new = {a["alert_id"] for a in alerts(dispatch.messages) if a["state"] != "cleared"} - seen
            if restored is None:
                outcomes["none"] += 1
                if new:
                    wrong.append(f"round {round_}: dispatch has alert {sorted(new)}, the vehicle no emergency")
            else:
                outcomes["restored"] += 1
                if new != {restored}:
                    wrong.append(f"round {round_}: the vehicle restored {restored}, dispatch received {sorted(new)}")
                if led not in ("raised", "delivered"):
                    wrong.append(f"round {round_}: emergency {restored} restored with the LED {led!r}")
                send_clear(broker.port, dispatch, restored)
            agent.kill9()
    finally:
        agent.kill9()
    print(f"\n50 kills 0-10 ms after a press: {outcomes}")
    assert not wrong, "\n".join(wrong)
    assert outcomes["restored"] >= 10, f"too few kills landed after the alert was durable: {outcomes}"


def test_an_unacknowledged_test_alarm_ends_after_its_timeout(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, panic__republish_s=0.5, panic__test_timeout_s=3)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    stages: list[dict[str, Any]] = []
    try:
        began = time.monotonic()

        def tool() -> None:
            stages.extend(agent.ask("panic_test", timeout=20))

        caller = threading.Thread(target=tool)
        caller.start()
        caller.join(15)
        took = time.monotonic() - began
        time.sleep(1.5)
        _, led = emergency(agent)
        count = len(alerts(dispatch.messages))
        time.sleep(1.5)
        later = len(alerts(dispatch.messages))
    finally:
        agent.kill9()
    sent = alerts(dispatch.messages)
    assert [s["stage"] for s in stages] == ["accepted", "delivered", "unacknowledged"], stages
    assert 3 <= took <= 6, f"the test alarm ended after {took:.1f} s (timeout 3 s)"
    assert sent[-1]["state"] == "unacknowledged" and sent[-1]["test"] is True, sent[-1]
    assert "not acknowledged" in (sent[-1]["note"] or "")
    assert later == count, "the test alarm was published again after it ended"
    assert led == "idle", f"the LED shows {led!r} after the test alarm ended"


def test_the_alerts_wal_stays_bounded_while_an_alarm_is_republished(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """An emergency nobody acknowledges, re-published every 0.1 s for 60 s: 600 publications, more than
    10 minutes at the default 15 s (40) or even at 1 s (600). The WAL is measured on the real file."""
    bound = 128 * 1024
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, panic__republish_s=0.1,
                       reporting__moving_interval_s=60, reporting__stopped_interval_s=60,
                       reporting__emergency_interval_s=1)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    wal = tmp_path / "state" / "outbox-alerts.sqlite-wal"
    sizes = []
    try:
        agent.ask("sim_press", name="driver")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sizes.append(wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.25)
    finally:
        agent.kill9()
    published = len(alerts(dispatch.messages))
    print(f"\n{published} publications of the alert in 60 s; alerts WAL at most {max(sizes):,} bytes "
          f"(bound {bound:,}), last {sizes[-1]:,}")
    assert published >= 300
    assert max(sizes) <= bound, f"the alerts WAL reached {max(sizes):,} bytes"


@pytest.mark.parametrize("garbage", [{"state": ["raised"]}, {"raised_at": "yesterday evening"},
                                     {"alert_id": None}, "not json at all"])
def test_a_saved_emergency_that_does_not_validate_is_moved_aside_and_reported(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector, garbage: Any) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path)
    agent = AgentProcess(tmp_path, cfg)
    agent.start()  # a first run creates the databases
    agent.terminate()
    saved = {"alert_id": "6f1b0c1e-0d7e-4c43-a0a5-5bd1b7d7f2a4", "trigger": "driver",
             "raised_at": "2026-11-25T08:14:05.031000+00:00", "state": "delivered", "test": False,
             "covert": False, "attempt": 2, "pending": [], "last_published": 0.0}
    text = garbage if isinstance(garbage, str) else json.dumps({**saved, **garbage})
    with sqlite3.connect(tmp_path / "state" / "outbox-alerts.sqlite") as db:
        db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('emergency', ?)", (text,))
    agent.start()
    try:
        events = dispatch.wait_for(lambda m: any(x.topic.endswith("/event") and x.json()["event"] == "fault"
                                                 and x.json()["name"] == "emergency_unreadable" for x in m),
                                   timeout=10)
        restored, led = emergency(agent)
        assert agent.running
    finally:
        agent.kill9()
    fault = next(x.json() for x in events if x.topic.endswith("/event") and x.json()["name"] == "emergency_unreadable")
    assert restored is None and led == "idle"
    with sqlite3.connect(tmp_path / "state" / "outbox-alerts.sqlite") as db:
        rows = dict(db.execute("SELECT key, value FROM state").fetchall())
    assert "emergency" not in rows
    aside = [key for key in rows if key.startswith("emergency.rejected-")]
    assert aside and rows[aside[0]] == text, rows
    assert aside[0] in fault["detail"]
