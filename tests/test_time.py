"""The unit's one time authority: which source wins, and what the receiver may not do to it.

The clock under test gets its wall clock, monotonic clock and "is NTP
synchronised?" injected; every time here is built from the real clock of the
test run (or from the clock's own floor), never from a date written in.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent.clock import FLOOR, MAX_DISAGREE_S, Clock, floor_unix, system_clock_synced
from agent.messages import TimeSource
from drivers.gnss.fix import Fix


class Times:
    """A wall clock that can be stepped (NTP after days parked) and a monotonic one that cannot."""

    def __init__(self, wall: float) -> None:
        self.wall_s = wall
        self.mono_s = 1000.0
        self.synced: bool | None = False

    def pass_(self, seconds: float) -> None:
        self.wall_s += seconds
        self.mono_s += seconds

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall_s, monotonic=lambda: self.mono_s, synced=lambda: self.synced)


def fix_at(unix: float, *, position: bool = True, simulated: bool = False) -> Fix:
    return Fix(time_ms=round(unix * 1000), mode=3 if position else 1, lat=42.7 if position else None,
               lon=23.3 if position else None, simulated=simulated)


NOW = time.time()  # the real clock of this run


def test_an_unsynchronised_clock_gives_way_to_a_live_fix_and_gnss_time_runs_on_the_monotonic_clock() -> None:
    times = Times(floor_unix() + 3600)  # a Pi after a cold start: a clock far behind, not synchronised
    clock = times.clock()
    assert clock.now()[1] is TimeSource.SYSTEM_UNSYNCED
    assert clock.offer(fix_at(NOW), times.mono_s)
    when, source = clock.now()
    assert source is TimeSource.GNSS and abs(when.timestamp() - NOW) < 0.01
    times.pass_(10)
    times.wall_s += 7 * 86400  # NTP steps the system clock a week forward: durations and GNSS time unmoved
    when, source = clock.now()
    assert source is TimeSource.GNSS and abs(when.timestamp() - (NOW + 10)) < 0.01


@pytest.mark.parametrize("case", ["no fix", "pre-fix date 1980", "year 2000", "far future", "simulated"])
def test_receiver_times_that_cannot_be_trusted_are_not_taken(case: str) -> None:
    times = Times(NOW)
    clock = times.clock()
    fix = {
        "no fix": fix_at(NOW, position=False),  # an MTK receiver's status-V epoch, whatever date it says
        "pre-fix date 1980": fix_at(datetime(1980, 1, 6, tzinfo=UTC).timestamp()),
        "year 2000": fix_at(datetime(2000, 1, 1, tzinfo=UTC).timestamp()),
        "far future": fix_at(floor_unix(FLOOR.replace(year=FLOOR.year + 31))),
        "simulated": fix_at(NOW, simulated=True),
    }[case]
    assert not clock.offer(fix, times.mono_s)
    assert clock.now()[1] is TimeSource.SYSTEM_UNSYNCED
    assert not clock.trusted(fix)


def test_a_receiver_may_refine_a_synchronised_clock_but_never_move_it() -> None:
    times = Times(NOW)
    times.synced = True
    clock = times.clock()
    assert clock.offer(fix_at(NOW + 0.4), times.mono_s)  # within a few seconds: the receiver is the better clock
    assert clock.now()[1] is TimeSource.GNSS
    later = Times(NOW)
    later.synced = True
    clock = later.clock()
    assert not clock.offer(fix_at(NOW - 3600), later.mono_s)  # an hour off: refused, and said
    assert clock.disagreement_s is not None and clock.disagreement_s < -MAX_DISAGREE_S
    when, source = clock.now()
    assert source is TimeSource.SYSTEM_SYNCED and abs(when.timestamp() - NOW) < 0.01


def test_a_receiver_time_taken_before_ntp_gives_way_when_the_synchronised_clock_disagrees() -> None:
    times = Times(NOW)
    clock = times.clock()
    assert clock.offer(fix_at(NOW - 120), times.mono_s)  # taken while unsynchronised
    times.synced = True
    clock._synced_cache = (float("-inf"), None)  # NTP has synchronised since
    assert clock.now()[1] is TimeSource.SYSTEM_SYNCED


def test_moment_of_a_fix_is_its_own_time_only_when_the_clock_took_it() -> None:
    times = Times(NOW)
    clock = times.clock()
    good = fix_at(NOW)
    assert clock.offer(good, times.mono_s)
    assert clock.moment_of(good) == (datetime.fromtimestamp(round(NOW * 1000) / 1000, tz=UTC), TimeSource.GNSS)
    bogus = fix_at(datetime(2000, 1, 1, tzinfo=UTC).timestamp(), position=False)
    clock.offer(bogus, times.mono_s)
    when, source = clock.moment_of(bogus)
    assert source is TimeSource.GNSS and abs(when.timestamp() - NOW) < 1  # now, from the trusted time


def test_non_finite_or_absurd_times_never_raise() -> None:
    times = Times(NOW)
    clock = times.clock()
    for value in (float("nan"), float("inf"), 1e300, -1e300):
        assert not clock.offer(Fix(time_ms=None, mode=3, lat=1.0, lon=1.0), times.mono_s)
        fix = Fix(time_ms=0, mode=3, lat=1.0, lon=1.0)
        object.__setattr__(fix, "time_ms", value)
        assert not clock.offer(fix, times.mono_s)
    assert clock.now()[1] is TimeSource.SYSTEM_UNSYNCED


def test_ntp_synchronisation_is_read_from_timesyncd_where_adjtimex_is_denied(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import agent.clock as clock_module

    monkeypatch.setattr(clock_module, "_adjtimex", lambda: None)  # as under ProtectClock=yes (systemd 252)
    flag = tmp_path / "timesync" / "synchronized"
    assert system_clock_synced(flag) is None  # no timesyncd here at all: unknown
    flag.parent.mkdir()
    assert system_clock_synced(flag) is False  # timesyncd, not synchronised yet
    flag.touch()
    assert system_clock_synced(flag) is True
    old = time.time() - 10 * 365 * 86400
    os.utime(flag, (old, old))  # touched before this boot: says nothing about now
    assert system_clock_synced(flag) is False

