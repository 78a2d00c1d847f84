"""A full or failing SD card under the running daemon: alerts still go out, nothing ends, writing resumes.

The faults are real: the whole state dir on a small tmpfs filled to ENOSPC
by another file, and on an ext4 card image that the kernel remounts
read-only after an injected file-system error (what a dying SD card does).
Both need root; without it the tests skip and say why.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.support import storage_faults as faults
from tests.support.agent_proc import AgentProcess, GnssFeeder, positions
from tests.support.faults import rig, seq_reuses
from tests.support.mqtt import Collector
from tests.support.storage import tmpfs

PRESS_NOW = [{"name": "driver", "pin": 17, "trigger": "press", "debounce_ms": 0}]


@pytest.mark.parametrize("kind", ["full", "read_only"])
def test_a_failing_card_stops_no_alert_and_the_backlog_is_written_when_it_returns(tmp_path: Path, kind: str) -> None:
    outcome = faults.storage_fault(tmp_path / kind, 1, kind)
    print(f"\n{outcome}")
    assert not outcome.problems, outcome.problems
    assert outcome.alerts_accepted == faults.PRESSES and outcome.alerts_lost == 0, outcome
    assert outcome.telemetry_lost == "none", outcome.telemetry_lost
    assert outcome.seq_reused == 0
    assert outcome.ok


def _wait_alert(collector: Collector, alert_id: str) -> None:
    collector.wait_for(lambda m: any(x.topic.endswith("/alert") and x.json()["alert_id"] == alert_id for x in m),
                       timeout=15)


def _remount(path: Path, how: str) -> None:
    done = subprocess.run(["mount", "-o", f"remount,{how}", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot remount {path} {how}: {done.stderr.strip()}")


def test_the_daemon_starts_on_a_card_already_read_only_and_its_boot_numbers_still_increase(tmp_path: Path) -> None:
    """The card went read-only before a reboot and stays so for several starts: every start runs, reports
    storage_failed, publishes a panic alert from RAM, and takes a larger boot number than the start before."""
    state = tmp_path / "state"
    with tmpfs(state, "8m"), rig(tmp_path, inputs__panic_buttons=PRESS_NOW) as (_broker, device, collector, cfg):
        feeder = GnssFeeder(device, rate_hz=5).start()
        agent = AgentProcess(tmp_path, cfg)
        try:
            agent.start()
            collector.wait_for(lambda m: len(positions(m)) >= 3)
            agent.terminate()
            _remount(state, "ro")
            boots = []
            for start in range(3):
                agent.start()  # raises if the daemon exits
                status = faults._status(agent)
                assert "storage_failed" in status["faults"], status["faults"]
                boots.append(status["outbox"]["boot"])
                if start == 0:
                    faults._press(agent)
                    _wait_alert(collector, agent.ask("alert")[-1]["emergency"]["alert_id"])
                assert agent.running
                agent.kill9()
                time.sleep(1.1)  # starts are at least RestartSec (2 s) apart under systemd
        finally:
            feeder.stop()
            agent.kill9()
            _remount(state, "rw")
    assert boots == sorted(boots) and len(set(boots)) == len(boots), boots
    assert seq_reuses(list(collector.messages)) == 0


def test_a_lost_boot_record_never_gives_a_number_twice_and_is_reported(tmp_path: Path) -> None:
    """The boot record deleted while the outbox is empty (everything acknowledged, as online): the next start
    must not take boot 1 again, or a dispatcher that drops duplicates by (vehicle, boot, seq) drops its alert."""
    with rig(tmp_path, inputs__panic_buttons=PRESS_NOW) as (_broker, device, collector, cfg):
        feeder = GnssFeeder(device, rate_hz=5).start()
        agent = AgentProcess(tmp_path, cfg)
        try:
            agent.start()
            collector.wait_for(lambda m: len(positions(m)) >= 5)
            first = faults._status(agent)["outbox"]["boot"]
            agent.terminate()
            record = Path(cfg["state_dir"]) / "outbox.sqlite.boot"
            record.unlink()
            agent.start()
            status = faults._status(agent)
            faults._press(agent)
            _wait_alert(collector, agent.ask("alert")[-1]["emergency"]["alert_id"])
        finally:
            feeder.stop()
            agent.kill9()
    assert status["outbox"]["boot"] > first, (first, status["outbox"]["boot"])
    assert "boot_record_lost" in status["faults"], status["faults"]
    messages = list(collector.messages)
    lost = [m.json() for m in messages if m.topic.endswith("/event") and m.json().get("name") == "boot_record_lost"]
    assert lost and "outbox.sqlite.boot missing" in lost[0]["detail"], lost
    assert seq_reuses(messages) == 0
