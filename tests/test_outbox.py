"""The outbox on its own: order, acknowledgement, windows, bounds, corruption, (boot, seq), a real full disk."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import outbox as outbox_module
from agent.boot import FLOOR_S, split
from agent.clock import Clock
from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox import Outbox
from tests.support.storage import fill, tmpfs

PREVIOUS_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, priority INTEGER NOT NULL, topic TEXT NOT NULL,
                                   payload BLOB NOT NULL, accepted_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""  # the telemetry database as versions before ``time_trusted`` made it


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: FakeTime | None = None, faults: list[tuple[str, str]] | None = None,
         **cfg: int | float) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(**cfg), clock=clock or FakeTime(),
                 on_fault=None if faults is None else lambda code, detail: faults.append((code, detail)),
                 on_clear=None if faults is None else lambda code: faults.append(("cleared", code)))
    box.open()
    return box


def put(box: Outbox, priority: int, n: int = 1) -> list[int]:
    ids = []
    for _ in range(n):
        seq = box.seq.take()
        ids.append(box.accept(seq, priority, "t", b'{"seq":%d}' % seq))
    return ids


def disk_ids(path: Path, *, alerts: bool = False) -> list[int]:
    if alerts:
        path = path.with_name(f"{path.stem}-alerts{path.suffix}")
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT id FROM outbox ORDER BY id")]


def test_alerts_jump_the_queue_and_rows_go_in_priority_then_id_order(tmp_path: Path) -> None:
    box = make(tmp_path)
    health = put(box, Priority.HEALTH, 2)
    positions = put(box, Priority.POSITION, 3)
    alert = put(box, Priority.ALERT)
    box.flush()
    more = put(box, Priority.POSITION, 1)
    leased = [r.id for r in box.lease(100)]
    assert leased == alert + positions + more + health


def test_an_alert_is_on_disk_when_accept_returns(tmp_path: Path) -> None:
    box = make(tmp_path)
    put(box, Priority.POSITION, 2)
    alert = put(box, Priority.ALERT)
    assert disk_ids(box.path) == []  # telemetry still within its window ...
    assert disk_ids(box.path, alerts=True) == alert  # ... the alert already committed, in its own file


def test_a_row_leaves_only_when_acknowledged(tmp_path: Path) -> None:
    box = make(tmp_path)
    ids = put(box, Priority.POSITION, 3)
    box.flush()
    rows = box.lease(3)
    box.flush()
    assert disk_ids(box.path) == ids  # leased (published) is not acknowledged
    box.ack([rows[0].id])
    box.release([r.id for r in rows[1:]])  # link dropped
    box.flush()
    assert disk_ids(box.path) == ids[1:]
    assert [r.id for r in box.lease(10)] == ids[1:]  # offered again


def test_telemetry_acknowledged_within_the_window_never_touches_the_disk(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock)
    commits = box.commits
    for _ in range(50):
        put(box, Priority.POSITION)
        box.ack([r.id for r in box.lease(10)])
        clock.now += 0.1
        box.tick()
    assert box.commits == commits and disk_ids(box.path) == []


def test_unacknowledged_telemetry_is_logged_once_per_window_and_batched_into_the_database(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock, commit_window_ms=1000)
    commits = box.commits
    for _ in range(30):  # 3 s offline at 10 messages a second
        put(box, Priority.POSITION)
        clock.now += 0.1
        box.tick()
    assert 2 <= box.log_appends <= 3  # one append per window ...
    assert box.commits == commits and disk_ids(box.path) == []  # ... and no SQLite commit yet
    log = tmp_path / "outbox.sqlite.log"
    assert log.stat().st_size > 0
    clock.now += outbox_module.BATCH_S
    box.tick()
    assert box.commits == commits + 1 and len(disk_ids(box.path)) >= 20  # then one transaction for all
    assert log.stat().st_size == 0


def test_what_the_window_log_holds_comes_back_after_a_kill(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock)
    logged = put(box, Priority.POSITION, 5)
    clock.now += 1.5
    box.tick()  # the window is over: in the log, not in the database
    lost = put(box, Priority.POSITION, 2)  # still within their window when the process dies
    assert disk_ids(box.path) == []
    again = make(tmp_path, clock)  # no close(): as after kill -9
    assert disk_ids(again.path) == logged
    assert [r.id for r in again.lease(10)] == logged
    assert not set(lost) & set(disk_ids(again.path))


def test_a_torn_record_at_the_end_of_the_window_log_loses_only_itself(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock)
    first = put(box, Priority.POSITION, 3)
    clock.now += 1.5
    box.tick()
    put(box, Priority.POSITION, 1)
    clock.now += 1.5
    box.tick()
    log = tmp_path / "outbox.sqlite.log"
    log.write_bytes(log.read_bytes()[:-7])  # a power cut in the middle of the last append
    faults: list[tuple[str, str]] = []
    again = make(tmp_path, clock, faults)
    assert disk_ids(again.path) == first
    assert not faults  # a power cut's tail is no fault


def _logged_windows(tmp_path: Path, clock: FakeTime, windows: int) -> list[list[int]]:
    box = make(tmp_path, clock)
    out = []
    for _ in range(windows):
        out.append(put(box, Priority.POSITION, 3))
        clock.now += 1.5
        box.tick()  # each window appended to the log
    return out


@pytest.mark.parametrize("damage", ["flip", "zeros", "garbage"])
def test_damage_in_the_middle_of_the_window_log_is_reported_and_the_rest_recovered(
        tmp_path: Path, damage: str) -> None:
    clock = FakeTime()
    windows = _logged_windows(tmp_path, clock, 3)
    log = tmp_path / "outbox.sqlite.log"
    data = bytearray(log.read_bytes())
    third = len(data) // 3
    if damage == "flip":
        data[third + 5] ^= 0xFF
    elif damage == "zeros":
        data[third:third + 40] = bytes(40)
    else:
        data[:third] = bytes(range(7, 7 + third))  # the first third garbage
    log.write_bytes(bytes(data))
    damaged = bytes(data)
    faults: list[tuple[str, str]] = []
    again = make(tmp_path, clock, faults)
    corrupt = [detail for code, detail in faults if code == "outbox_corrupt"]
    assert len(corrupt) == 1 and "outbox.sqlite.log" in corrupt[0], faults
    aside = list(tmp_path.glob("outbox.sqlite.log.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged and aside[0].name in corrupt[0]  # kept as found
    assert set(windows[2]) <= set(disk_ids(again.path))  # what follows the damage is read
    assert set(disk_ids(again.path)) < {i for w in windows for i in w}


def test_full_outbox_evicts_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    box = make(tmp_path, max_messages=100)
    early_alerts = put(box, Priority.ALERT, 3)
    telemetry = put(box, Priority.POSITION, 150)
    late_alert = put(box, Priority.ALERT)
    box.flush()
    on_disk = disk_ids(box.path)
    assert len(on_disk) <= 100
    assert disk_ids(box.path, alerts=True) == early_alerts + late_alert
    kept = [i for i in on_disk if i in telemetry]
    assert kept == telemetry[-len(kept):]  # the newest survive
    assert box.evictions == 150 - len(kept)
    box.close()
    again = make(tmp_path, max_messages=100)
    assert again.evictions == 150 - len(kept)  # the count survives a restart


def test_old_telemetry_expires(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock, max_age_h=1)
    old = put(box, Priority.POSITION, 2)
    alert = put(box, Priority.ALERT)
    box.flush()
    clock.now += 2 * 3600
    fresh = put(box, Priority.POSITION)
    box.flush()
    box.tick()  # the daemon's own rhythm evicts what is too old
    assert disk_ids(box.path) == fresh and disk_ids(box.path, alerts=True) == alert
    assert box.evictions == len(old)


def test_corrupt_database_is_moved_aside_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database" * 500)
    faults: list[tuple[str, str]] = []
    box = Outbox(path, OutboxConfig(), on_fault=lambda code, detail: faults.append((code, detail)))
    box.open()
    aside = list(tmp_path.glob("outbox.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert faults and faults[0][0] == "outbox_corrupt" and aside[0].name in faults[0][1]
    ids = put(box, Priority.ALERT)
    assert disk_ids(path, alerts=True) == ids


def test_every_start_is_a_new_boot_and_seq_counts_from_1_without_gaps(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock)
    boot = box.seq.boot  # a new state dir: the seconds since the build floor (a replaced card cannot go back)
    assert boot == int(clock.now) - FLOOR_S
    first = [split(i) for i in put(box, Priority.POSITION, 5)]  # never committed: a kill -9 loses them
    assert first == [(boot, 1), (boot, 2), (boot, 3), (boot, 4), (boot, 5)]
    again = make(tmp_path, clock)  # no close(): as after kill -9
    assert [split(i) for i in put(again, Priority.EVENT, 2)] == [(boot + 1, 1), (boot + 1, 2)]
    boot_file = tmp_path / "outbox.sqlite.boot"
    assert boot_file.stat().st_size == 64  # two slots, rewritten in place
    data = bytearray(boot_file.read_bytes())
    newest = max((0, 32), key=lambda at: int.from_bytes(data[at + 8:at + 16], "little"))
    data[newest + 10] ^= 0xFF  # the newest slot torn (or damaged): the other one + 2 covers both
    boot_file.write_bytes(bytes(data))
    assert make(tmp_path, clock).seq.boot == boot + 2


BOOT_DAMAGE = {
    "deleted": lambda f: f.unlink(),
    "zeroed": lambda f: f.write_bytes(b"\0" * 64),
    "emptied": lambda f: f.write_bytes(b""),
    "truncated": lambda f: f.write_bytes(f.read_bytes()[:20]),
    "garbage": lambda f: f.write_bytes(bytes(range(64))),
}


@pytest.mark.parametrize("damage", sorted(BOOT_DAMAGE))
@pytest.mark.parametrize("clock_known", [True, False])
def test_a_lost_boot_record_never_gives_a_boot_number_twice(tmp_path: Path, damage: str, clock_known: bool) -> None:
    """The record lost while the outbox is empty (everything acknowledged: the databases know no boot): the
    next start takes a larger number than any before, and says so (``boot_record_lost``)."""
    clock = FakeTime()
    if not clock_known:
        clock.now = FLOOR_S - 86400.0  # a Pi without RTC before NTP: nothing bounds the numbers used before
    used = []
    for _ in range(3):
        box = make(tmp_path, clock)
        used.append(box.seq.boot)
        box.ack([r.id for r in box.lease(10)])
        put(box, Priority.POSITION, 3)
        box.ack([r.id for r in box.lease(10)])
        box.close()
        clock.now += 2.0
    BOOT_DAMAGE[damage](tmp_path / "outbox.sqlite.boot")
    faults: list[tuple[str, str]] = []
    box = make(tmp_path, clock, faults)
    assert box.seq.boot > max(used), (used, box.seq.boot)
    lost = [detail for code, detail in faults if code == "boot_record_lost"]
    assert len(lost) == 1 and "outbox.sqlite.boot" in lost[0], faults
    assert "clock is before" not in lost[0], lost[0]  # the alerts database noted the last start's number
    box.close()
    clock.now += 2.0
    again: list[tuple[str, str]] = []
    assert make(tmp_path, clock, again).seq.boot == box.seq.boot + 1 and not again  # written again: counts on


def test_boot_numbers_increase_from_start_to_start_on_a_read_only_card(tmp_path: Path) -> None:
    """The real fault: a tmpfs remounted read-only. The record cannot be written, yet every start takes a
    larger number than the one before (the clock's: starts are seconds apart), and it is written once the
    card takes writes again."""
    with tmpfs(tmp_path / "state", "2m") as state:
        clock = FakeTime()
        box = make(state, clock)
        box.close()
        if subprocess.run(["mount", "-o", "remount,ro", str(state)], check=False).returncode != 0:
            pytest.skip("cannot remount the tmpfs read-only")
        try:
            boots = []
            for _ in range(5):
                clock.now += 2.0
                faults: list[tuple[str, str]] = []
                ro = make(state, clock, faults)
                assert "storage_failed" in ro.faults
                boots.append(ro.seq.boot)
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(state)], check=True)
        assert boots == sorted(boots) and len(set(boots)) == 5, boots
        clock.now += outbox_module.RETRY_S + 0.1
        ro.tick()  # the card takes writes again: the last start's number is written, the fault cleared
        assert "storage_failed" not in ro.faults and ("cleared", "storage_failed") in faults
        clock.now += 2.0
        assert make(state, clock).seq.boot == boots[-1] + 1


def test_a_card_full_at_the_first_start_clears_the_fault_and_writes_the_boot_record_when_space_returns(
        tmp_path: Path) -> None:
    """The real fault: a fresh tiny tmpfs filled to ENOSPC before the first start. The full card is reported
    as full (never as failing); when space returns, within the retry interval, the fault clears and the boot
    number is written, so that the next start counts on from it."""
    with tmpfs(tmp_path / "state", "1m") as state:
        filler = fill(state)
        clock = FakeTime()
        faults: list[tuple[str, str]] = []
        box = make(state, clock, faults)
        first = box.seq.boot
        alert = put(box, Priority.ALERT)  # never refused
        assert [r.id for r in box.lease(1)] == alert
        put(box, Priority.POSITION, 20)
        for _ in range(3):
            clock.now += outbox_module.RETRY_S + 0.1
            box.tick()
        assert "disk_full" in box.faults
        filler.unlink()
        clock.now += outbox_module.RETRY_S + 0.1
        box.tick()
        assert not box.faults & {"disk_full", "storage_failed"}, faults
        assert "storage_failed" not in {code for code, _ in faults}, faults  # full is full, not failing
        assert disk_ids(box.path, alerts=True) == alert
        clock.now += 2.0
        assert make(state, clock).seq.boot == first + 1


def test_a_full_card_keeps_alerts_in_ram_bounds_telemetry_and_writes_all_when_space_returns(tmp_path: Path) -> None:
    """The real fault: the state dir on a 2 MB tmpfs, filled to ENOSPC by another file."""
    with tmpfs(tmp_path / "state", "2m") as state:
        clock = FakeTime()
        faults: list[tuple[str, str]] = []
        box = make(state, clock, faults, ram_ring=100)
        put(box, Priority.POSITION, 10)
        clock.now += 1.5
        box.tick()
        filler = fill(state)
        for _ in range(300):  # 30 s at 10 positions a second
            put(box, Priority.POSITION)
            clock.now += 0.1
            box.tick()
        alert = put(box, Priority.ALERT)  # never refused
        assert [r.id for r in box.lease(1)] == alert
        assert "disk_full" in {code for code, _ in faults} and "disk_full" in box.faults
        assert box.stats()["alerts_unsaved"] == 1
        assert box.dropped > 0 and len(box._ram) <= 100  # the RAM ring holds 100; older ones dropped, counted
        filler.unlink()
        clock.now += outbox_module.RETRY_S + 0.1
        box.tick()
        assert ("cleared", "disk_full") in faults and "disk_full" not in box.faults
        assert disk_ids(box.path, alerts=True) == alert
        assert box.stats()["alerts_unsaved"] == 0 and box.stats()["held_in_ram"] == 0
        box.close()
        again = make(state, clock)
        kept = [r.id for r in again.lease(1000)]
        assert kept[0] == alert[0] and len(kept) >= 100 and again.stats()["dropped"] == box.dropped
        again.close()


@pytest.mark.parametrize("n", [1, 1200])
def test_lease_offers_each_row_once_until_released(tmp_path: Path, n: int) -> None:
    box = make(tmp_path)
    ids = put(box, Priority.POSITION, n)
    box.flush()
    seen: list[int] = []
    while rows := box.lease(37):
        seen += [r.id for r in rows]
        box.ack([r.id for r in rows])
        box.tick()
    assert seen == ids


def test_an_unsent_alert_survives_an_eviction_of_telemetry(tmp_path: Path) -> None:
    box = make(tmp_path, max_messages=100)
    alert = put(box, Priority.ALERT)
    put(box, Priority.POSITION, 150)
    box.flush()  # over the bound: telemetry evicted, the read-ahead rebuilt
    assert box.evictions > 0
    assert box.lease(1)[0].id == alert[0]


def test_the_newest_position_sent_first_is_not_sent_again_with_the_backlog(tmp_path: Path) -> None:
    """After a reconnect the newest position goes first; once acknowledged it must not come out again
    among the backlog (it stayed in the read-ahead heap while leased, and went out a second time)."""
    clock = FakeTime()
    box = make(tmp_path, clock)
    on_disk = put(box, Priority.POSITION, 5)
    clock.now += 1.5
    box.tick()
    in_ram = put(box, Priority.POSITION, 3)
    newest = box.newest(Priority.POSITION)
    assert newest is not None and newest.id == in_ram[-1]
    box.ack([newest.id])
    assert [r.id for r in box.lease(100)] == on_disk + in_ram[:-1]


def test_a_backlog_left_by_the_previous_version_is_still_published(tmp_path: Path) -> None:
    """Schema 1 rows (a seq unique across restarts, no boot) in a WAL database of 4 KiB pages, as the
    previous version left them: they are this vehicle's own, and go out before the new boot's."""
    from agent.rows import RowCheck
    from agent.topics import Topics

    legacy = (b'{"schema_version":1,"kind":"position","vehicle_id":"PV-1","seq":1042,"msg_id":"m-1042",'
              b'"time":"2026-01-01T00:00:00.000Z","time_source":"gnss","reason":"interval","fix":null,'
              b'"gnss_mode":1,"alert_id":null}')
    db = sqlite3.connect(tmp_path / "outbox.sqlite")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(PREVIOUS_SCHEMA)
    db.execute("INSERT INTO outbox VALUES (1042, 3, 'patrol/PV-1/position', ?, 1.0)", (legacy,))
    db.commit()
    db.close()
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(), clock=FakeTime(), check=RowCheck(Topics("patrol", "PV-1")))
    box.open()
    new = box.accept(box.seq.take(), Priority.POSITION, "patrol/PV-1/position", b'{"x":1}')  # not checked: RAM
    assert [(r.id, r.payload) for r in box.lease(10)] == [(1042, legacy), (new, b'{"x":1}')]
    assert box.rejected == 0


class SteppingClock:
    """The unit's clock with a wall clock that steps and a monotonic clock that does not."""

    def __init__(self, *, synced: bool) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 1000.0
        self.synced = synced

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall, monotonic=lambda: self.mono, synced=lambda: self.synced)

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make_with(tmp_path: Path, clock: SteppingClock, **cfg: int | float) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(**cfg), clock=clock.clock())
    box.open()
    return box


def stored_trust(path: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(path) as db:
        return [(r[0], r[1]) for r in db.execute("SELECT id, time_trusted FROM outbox ORDER BY id")]


@pytest.mark.parametrize("synced", [False, True])
def test_a_wall_clock_jumping_forward_expires_nothing_of_this_boot(tmp_path: Path, synced: bool) -> None:
    clock = SteppingClock(synced=synced)
    box = make_with(tmp_path, clock, max_age_h=1)
    rows = put(box, Priority.POSITION, 3)
    box.flush()
    clock.wall += 7 * 24 * 3600  # NTP, or a receiver, sets the clock a week ahead
    clock.run(60)
    box.tick()
    box.expire()
    assert disk_ids(box.path) == rows and box.evictions == 0
    clock.run(3600)  # an hour on the monotonic clock: now they are known to be too old
    box.expire()
    assert disk_ids(box.path) == [] and box.evictions == 3


def test_untrusted_rows_of_an_earlier_boot_expire_only_after_this_boots_uptime_exceeds_max_age(tmp_path: Path) -> None:
    clock = SteppingClock(synced=False)  # a Pi without RTC, before NTP
    box = make_with(tmp_path, clock, max_age_h=1)
    rows = put(box, Priority.POSITION, 3)
    box.close()
    assert [t for _, t in stored_trust(box.path)] == [0, 0, 0]
    clock.wall += 30 * 24 * 3600  # the next start: NTP has put the clock a month ahead
    clock.synced = True
    again = make_with(tmp_path, clock, max_age_h=1)
    again.expire()
    assert disk_ids(again.path) == rows  # their age is not known: kept
    clock.run(3500)
    again.expire()
    assert disk_ids(again.path) == rows
    clock.run(200)  # this boot alone has lasted longer than max_age
    again.expire()
    assert disk_ids(again.path) == [] and again.evictions == 3


def test_trusted_rows_of_an_earlier_boot_expire_against_a_trusted_now_only(tmp_path: Path) -> None:
    clock = SteppingClock(synced=True)
    box = make_with(tmp_path, clock, max_age_h=1)
    rows = put(box, Priority.POSITION, 3)
    clock.run(1.5)
    box.tick()  # through the window log: the trust is kept there too
    box.close()
    assert [t for _, t in stored_trust(box.path)] == [1, 1, 1]
    clock.wall += 2 * 3600
    clock.synced = False  # the next start: the clock is not trusted (yet)
    again = make_with(tmp_path, clock, max_age_h=1)
    again.expire()
    assert disk_ids(again.path) == rows
    again.close()
    clock.synced = True
    third = make_with(tmp_path, clock, max_age_h=1)
    third.expire()
    assert disk_ids(third.path) == [] and third.evictions == 3


def test_the_commit_window_runs_on_through_a_wall_clock_stepped_back(tmp_path: Path) -> None:
    clock = SteppingClock(synced=False)
    box = make_with(tmp_path, clock, commit_window_ms=1000)
    put(box, Priority.POSITION, 2)
    clock.wall -= 3600  # the clock is corrected an hour back
    for _ in range(15):
        put(box, Priority.POSITION)
        clock.mono += 0.1
        box.tick()
    assert box.log_appends >= 1 and (tmp_path / "outbox.sqlite.log").stat().st_size > 0
    assert box.stats()["held_in_ram"] == 0


def test_oldest_age_is_what_can_be_known(tmp_path: Path) -> None:
    clock = SteppingClock(synced=False)
    box = make_with(tmp_path, clock)
    assert box.oldest_age_s() is None
    put(box, Priority.POSITION, 2)
    clock.run(20)
    clock.wall += 7 * 24 * 3600
    assert 15 <= (box.oldest_age_s() or 0) <= 20  # this boot's: by the monotonic clock, not a week
    box.close()
    again = make_with(tmp_path, clock)
    clock.run(30)
    assert again.oldest_age_s() == 30  # an earlier boot's, untrusted: at least this boot's uptime


OPS = st.sampled_from(["accept", "alert", "lease_ack", "ack_out", "tick", "batch", "flush", "restart", "kill", "age"])


def _truth(box: Outbox) -> tuple[int, int, int, int | None]:
    """On disk rows and stored bytes (from the file, another connection), messages waiting, the oldest one."""
    with contextlib.closing(sqlite3.connect(box.path)) as db:
        rows = db.execute("SELECT id, length(payload) FROM outbox").fetchall()
    waiting = ({r[0] for r in rows} - box._deletes) | set(box._ram) | set(box._logged) | set(box.alerts.rows)
    return len(rows), sum(r[1] for r in rows), len(waiting), min(waiting, default=None)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(OPS, st.integers(1, 60)), min_size=1, max_size=25))
def test_counters_equal_the_true_counts_whatever_comes_and_goes(ops: list[tuple[str, int]]) -> None:
    """A random mix of accepts, acknowledgements, releases, batches with evictions, expiry, restarts and
    kills: the outbox's counters (kept as rows come and go) are what the files and RAM hold."""
    with tempfile.TemporaryDirectory() as tmp:
        clock = SteppingClock(synced=True)
        box = make_with(Path(tmp), clock, max_messages=100, max_age_h=1)
        accepted, acked, killed = 0, 0, False
        out: list[int] = []  # leased, neither acknowledged nor released
        for op, n in ops:
            if op == "accept":
                for _ in range(n):  # payloads of many sizes: stored bytes cannot be estimated from an average
                    seq = box.seq.take()
                    pad = "".join(hashlib.sha256(b"%d-%d" % (seq, i)).hexdigest() for i in range(seq % 7))
                    box.accept(seq, Priority.POSITION, "t", b'{"seq":%d,"pad":"%s"}' % (seq, pad.encode()))
                accepted += n
            elif op == "alert":
                put(box, Priority.ALERT)
                accepted += 1
            elif op == "lease_ack":  # a third acknowledged, a third released (link down), a third kept out
                leased = box.lease(n)
                box.ack([r.id for r in leased[::3]])
                box.release([r.id for r in leased[1::3]])
                out += [r.id for r in leased[2::3]]
                acked += len(leased[::3])
            elif op == "ack_out":  # their PUBACKs come (some may have been evicted meanwhile)
                evicted = box.evictions
                with contextlib.closing(sqlite3.connect(box.path)) as db:
                    there = {r[0] for r in db.execute("SELECT id FROM outbox")}
                kept = there | set(box._ram) | set(box._logged) | set(box.alerts.rows)
                acked += sum(1 for i in out if i in kept and i not in box._deletes)
                box.ack(out)
                out = []
                assert box.evictions == evicted
            elif op == "tick":
                clock.run(1.5)
                box.tick()
            elif op == "batch":
                clock.run(outbox_module.BATCH_S)
                box.tick()
            elif op == "flush":
                box.flush()
            elif op == "age":
                clock.run(n * 120)
                box.expire()
            elif op in ("restart", "kill"):
                if op == "restart":
                    box.close()
                else:
                    box._release()  # kill -9: nothing flushed; RAM, uncommitted acks and counters lost
                    killed = True
                box = make_with(Path(tmp), clock, max_messages=100, max_age_h=1)
                out = []  # a new connection: those will never be acknowledged
            stats = box.stats()
            on_disk, size, waiting, oldest = _truth(box)
            assert (stats["on_disk"], stats["bytes"], stats["depth"]) == (on_disk, size, waiting), (op, n)
            if oldest is None:
                assert stats["oldest_age_s"] is None
            else:
                assert stats["oldest_age_s"] is not None
            if not killed:  # every message is waiting, acknowledged, evicted or dropped
                assert accepted == waiting + acked + box.evictions + box.dropped, (op, n)
        box.close()


def test_a_wiped_or_replaced_card_starts_above_every_number_the_unit_used(tmp_path: Path) -> None:
    """A new card in the unit (every state file gone): nothing says it is not a new unit, so no fault, but
    its first boot number comes from the clock (seconds since the build floor), above the old card's."""
    clock = FakeTime()
    used = []
    for _ in range(3):
        box = make(tmp_path, clock)
        used.append(box.seq.boot)
        box.close()
        clock.now += 2.0
    for leftover in tmp_path.iterdir():
        leftover.unlink()
    faults: list[tuple[str, str]] = []
    assert make(tmp_path, clock, faults).seq.boot > max(used) and not faults
