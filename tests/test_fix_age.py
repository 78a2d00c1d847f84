"""A stale fix is never sent as live: the receiver unplugged during an emergency.

The real daemon, a pty receiver that is unplugged for real, a real broker.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

MAX_AGE_S = 1.0


def test_unplugged_during_an_emergency_positions_say_no_fix_and_carry_the_last_known_with_its_age(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    dispatch = Collector(broker.port, "patrol/#", client_id="fix-age-dispatch")
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, reporting__moving_interval_s=600,
                       reporting__stopped_interval_s=600)
    cfg["gnss"]["max_fix_age_s"] = MAX_AGE_S
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: any(p["fix"] for p in positions(m)))
        assert agent.ask("sim_press", name="driver")[-1]["ok"]
        dispatch.wait_for(lambda m: sum(1 for p in positions(m) if p["reason"] == "emergency" and p["fix"]) >= 2)
        feeder.stop()
        gnss_pty.unplug()
        unplugged = time.monotonic()
        got = dispatch.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/position") and x.at > unplugged
                                              + MAX_AGE_S + 0.3 and x.json()["reason"] == "emergency") >= 4,
                                timeout=15)
        line = agent.ask("status")[-1]["status"]["status_line"]
    finally:
        feeder.stop()
        agent.kill9()
        dispatch.close()
    after = [(x.at, x.json()) for x in got if x.topic.endswith("/position") and x.at > unplugged + MAX_AGE_S + 0.3]
    emergency = [p for _, p in after if p["reason"] == "emergency"]
    assert all(p["fix"] is None and p["gnss_mode"] == 1 for _, p in after), "a stale fix sent as live"
    ages = [p["last_known"]["age_s"] for p in emergency]
    assert all(p["last_known"]["fix"]["lat"] for p in emergency), "where the car was"
    assert ages == sorted(ages) and ages[-1] > ages[0], f"the age grows: {ages}"
    assert ages[0] >= MAX_AGE_S
    assert "last fix" in line and "GNSS 3D" not in line, line
    assert all(p["alert_id"] for p in emergency)
