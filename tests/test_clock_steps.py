"""The real daemon under a wall clock that steps (NTP after a cold start, a receiver setting the clock).

The daemon runs under libfaketime (``apt-get install faketime``; installed by
tools/ensure-system-deps.sh) with its monotonic clock left alone
(``FAKETIME_DONT_FAKE_MONOTONIC``) and its wall clock offset by what a file
says, rewritten by the test to step it. What the daemon does with time is
then seen from outside: what dispatch receives, and in what order.

The daemon's clock counts as not NTP-synchronised (tests/support/unsynced_clock):
the case of a unit without RTC whose clock steps. A clock that NTP says is
synchronised is believed: rows older than ``outbox.max_age_h`` by it expire.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import AgentProcess, GnssFeeder, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss

UNSYNCED = Path(__file__).parent / "support" / "unsynced_clock"
LIBFAKETIME = [Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
               Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
               Path("/usr/lib/arm-linux-gnueabihf/faketime/libfaketime.so.1"),
               Path("/usr/lib/faketime/libfaketime.so.1")]
WEEK_S = 7 * 24 * 3600


class SteppedClock:
    """The wall clock of the processes started with :attr:`env`: real time plus an offset the test sets."""

    def __init__(self, workdir: Path) -> None:
        lib = next((p for p in LIBFAKETIME if p.exists()), None)
        if lib is None:
            pytest.fail("libfaketime is not installed: apt-get install faketime (tools/ensure-system-deps.sh)")
        self.file = workdir / "faketime"
        self.offset_s = 0
        self.set(0)
        self.env = {"LD_PRELOAD": str(lib), "FAKETIME_TIMESTAMP_FILE": str(self.file),
                    "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1",
                    # the clock is not NTP-synchronised, whatever this machine's kernel says of its own
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(UNSYNCED), os.environ.get("PYTHONPATH")]))}

    def set(self, offset_s: int) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        tmp.replace(self.file)
        self.offset_s = offset_s


@pytest.fixture
def dispatch(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Collector]:
    collector = Collector(broker.port, "patrol/#", client_id=f"dispatch-{request.node.name}"[:60])
    yield collector
    collector.close()


def test_a_wall_clock_stepped_a_week_forward_and_an_hour_back_offline_loses_and_expires_nothing(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: broker down; with a backlog building at 5 Hz the daemon's wall clock jumps a week
    forward, then an hour back (max_age_h is 1 h); kill -9 a few seconds after the step back; restart
    (the clock still stepped) and the broker back. Every position accepted up to the kill, less the
    commit window, reaches dispatch: nothing expired, the window log written on schedule after the step
    back; the backlog oldest-first and marked historical."""
    clock = SteppedClock(tmp_path)
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, outbox__max_age_h=1, outbox__commit_window_ms=500)
    agent = AgentProcess(tmp_path, cfg)
    agent.start(env=clock.env)
    feeder = GnssFeeder(gnss_pty, rate_hz=5).start()
    try:
        dispatch.wait_for(lambda m: len(positions(m)) >= 5)
        broker.stop()
        down_at = time.monotonic()
        time.sleep(3)
        clock.set(WEEK_S)  # a receiver or NTP sets the clock a week ahead
        time.sleep(3)
        clock.set(WEEK_S - 3600)  # ... and corrects it by an hour
        time.sleep(4)
        killed_at = time.monotonic()
        agent.kill9()
        fed = [t for at, t in feeder.fed if down_at + 0.5 < at < killed_at - 1.5]  # older than the window
        agent.start(env=clock.env)
        broker.start()
        with contextlib.suppress(TimeoutError):  # what is missing is said below
            dispatch.wait_for(lambda m: set(fed) <= {p["fix"]["fix_time"] for p in positions(m) if p.get("fix")},
                              timeout=30)
    finally:
        feeder.stop()
        agent.kill9()
    delivered = [p for p in positions(dispatch.messages) if p.get("fix")]
    by_time = {p["fix"]["fix_time"]: p for p in delivered}
    missing = [t for t in fed if t not in by_time]
    assert not missing, f"{len(missing)} of {len(fed)} positions accepted while offline never arrived"
    assert len(fed) >= 40
    backlog = [p for p in delivered if p["fix"]["fix_time"] in set(fed)]
    assert all(p["historical"] for p in backlog), "a position held through the outage arrived as live"
    order = [(p["boot"], p["seq"]) for p in backlog if p["boot"] == backlog[0]["boot"]]
    newest_first = order[:1]  # the newest position goes first at link-up, by design; then oldest-first
    rest = [o for o in order if o not in newest_first]
    assert rest == sorted(rest), "the backlog did not arrive oldest-first"
    log_text = agent.log.read_text()
    assert "evicted" not in log_text, "telemetry was expired or evicted"


def test_an_open_alert_keeps_its_republish_rhythm_through_a_restart_and_clock_steps(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss, dispatch: Collector) -> None:
    """Injected: a panic press dispatch does not acknowledge (republished every 1 s), SIGTERM and a
    restart with the wall clock an hour back, then a week forward. The alert is restored and keeps being
    published again about once a second through both steps."""
    clock = SteppedClock(tmp_path)
    cfg = agent_config(tmp_path, broker.port, gnss_pty.path, panic__republish_s=1.0,
                       inputs__panic_buttons=[{"name": "driver", "pin": 17, "trigger": "press", "debounce_ms": 0}])
    agent = AgentProcess(tmp_path, cfg)
    agent.start(env=clock.env)
    try:
        agent.ask("sim_press", name="driver")
        time.sleep(0.1)
        agent.ask("sim_release", name="driver")
        dispatch.wait_for(lambda m: sum(1 for x in m if x.topic.endswith("/alert")) >= 3, timeout=10)
        alert_id = next(x.json()["alert_id"] for x in dispatch.messages if x.topic.endswith("/alert"))
        agent.terminate()
        clock.set(-3600)
        agent.start(env=clock.env)
        counts = []
        for step in (None, WEEK_S):
            if step is not None:
                clock.set(step)
            before = sum(1 for x in dispatch.messages if x.topic.endswith("/alert"))
            time.sleep(6)
            counts.append(sum(1 for x in dispatch.messages if x.topic.endswith("/alert")) - before)
        restored = agent.ask("alert")[-1]["emergency"]
    finally:
        agent.kill9()
    assert restored is not None and restored["alert_id"] == alert_id
    ids = {x.json()["alert_id"] for x in dispatch.messages if x.topic.endswith("/alert")}
    assert ids == {alert_id}
    # about one a second: at least 3 in each 6 s (a generous floor: a shared machine), after the restart
    # with the clock an hour back, and after the step a week forward
    assert all(c >= 3 for c in counts), f"republished copies in 6 s after restart, after the step: {counts}"
