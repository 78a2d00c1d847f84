"""The outbox on its own: order, acknowledgement, windows, bounds, corruption, sequence numbers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox import SEQ_BLOCK, Outbox


class FakeTime:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: FakeTime | None = None, **cfg: int | float) -> Outbox:
    box = Outbox(tmp_path / "outbox.sqlite", OutboxConfig(**cfg), clock=clock or FakeTime())
    box.open()
    return box


def put(box: Outbox, priority: int, n: int = 1) -> list[int]:
    ids = []
    for _ in range(n):
        seq = box.seq.take()
        box.accept(seq, priority, "t", b'{"seq":%d}' % seq)
        ids.append(seq)
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


def test_unacknowledged_telemetry_is_committed_once_per_window(tmp_path: Path) -> None:
    clock = FakeTime()
    box = make(tmp_path, clock, commit_window_ms=1000)
    commits = box.commits
    for _ in range(30):  # 3 s offline at 10 messages a second
        put(box, Priority.POSITION)
        clock.now += 0.1
        box.tick()
    assert 2 <= box.commits - commits <= 3
    assert len(disk_ids(box.path)) >= 20


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
    box.expire()
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


def test_sequence_numbers_are_never_reused_even_without_a_clean_close(tmp_path: Path) -> None:
    box = make(tmp_path)
    first = put(box, Priority.POSITION, 5)  # never committed: a kill -9 loses them
    box._db.close()  # type: ignore[union-attr]  # no close(): as after kill -9
    again = make(tmp_path)
    assert again.seq.take() > max(first)
    (tmp_path / "outbox.sqlite").unlink()  # even the database lost
    third = make(tmp_path)
    assert third.seq.take() > SEQ_BLOCK


def test_disk_full_keeps_alerts_and_drops_telemetry(tmp_path: Path) -> None:
    box = make(tmp_path)
    assert box._db is not None
    put(box, Priority.POSITION, 50)
    box.flush()
    page_count = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {page_count}")  # the disk is now full
    put(box, Priority.POSITION, 400)
    box.flush()
    alert = put(box, Priority.ALERT)
    assert alert[0] in disk_ids(box.path, alerts=True)
    assert "disk_full" in box.faults and box.evictions > 0


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
