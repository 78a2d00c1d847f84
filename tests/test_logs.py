"""A full simulated run's logs at INFO: no secret, no coordinates."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

SECRET = "Sup3r-Secret-Passw0rd"


def test_logs_of_a_full_run_hold_no_secret_and_no_coordinates(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, log_level="INFO", panic__republish_s=0.5)
    cfg["mqtt"].update(username="PV-TEST-1", password=SECRET)
    collector = Collector(broker.port, "patrol/#", client_id="log-watch")
    agent = AgentProcess(tmp_path, cfg)
    agent.start()
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        collector.wait_for(lambda m: any(x.topic.endswith("/position") for x in m))
        agent.ask("sim_press", name="driver", hold=1.0)
        agent.ask("sim_press", name="ignition")
        collector.wait_for(lambda m: any(x.topic.endswith("/alert") for x in m))
        assert agent.first_reply("panic_test")["stage"] == "accepted"
        broker.kill()  # an outage: reconnect attempts are logged too
        time.sleep(1.5)
        broker.start()
        collector.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/status")) >= 2, timeout=15)
        assert agent.terminate() == 0
    finally:
        feeder.stop()
        collector.close()
        agent.kill9()
    log = agent.log.read_text()
    assert "INFO" in log and "PANIC ALERT" in log and "link up" in log  # the run was logged
    assert SECRET not in log
    assert not re.search(r"\b4[0-9]\.\d{3,}", log), "a latitude in the log"
    assert not re.search(r"\b2[0-9]\.\d{3,}", log), "a longitude in the log"
    assert "4241." not in log and "$GP" not in log, "raw NMEA in the log"
