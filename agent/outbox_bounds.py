"""The outbox's bounds and the age of its rows: what is evicted, and when.

Part of the outbox's storage (:class:`agent.outbox_store.OutboxStore` mixes
it in; the core thread owns it). It owns the bounds ``max_messages``,
``max_bytes`` (the oldest telemetry evicted, exactly the excess, never an
alert, counted persistently) and ``max_age_h``, and what the age of a row
is known to be.

Time. Every timer (the commit and sync windows, batches, retries, expiry
rounds) runs on the monotonic clock: a step of the wall clock (NTP after a
cold start, a receiver setting it, a Pi without RTC booting in 1970) moves
none of them. A row's ``accepted_at`` is the unit's UTC as
:meth:`agent.clock.Clock.stamp` gives it, stored with ``time_trusted`` (1
when the clock was trusted then; 0 otherwise, and for rows of earlier
versions). ``max_age_h`` removes only rows whose age is known to be over:

- rows of this boot by the monotonic clock (``_marks``: every ``MARK_S`` a
  (seq, monotonic) pair, so a row is known to be at least as old as the
  first mark at or after it);
- rows of earlier boots with a trusted ``accepted_at`` against a trusted
  now; any row of an earlier boot once this boot's uptime alone exceeds
  ``max_age_h``.

A clock that jumps forward therefore never expires anything.
"""

from __future__ import annotations

import bisect
import logging
import math
import sqlite3
from array import array

from agent.boot import Sequence, split
from agent.clock import Clock
from agent.config import OutboxConfig
from agent.rows import Row
from agent.store import Db

log = logging.getLogger(__name__)

MARK_S = 5.0  # a (seq, monotonic) mark per this long: the age of this boot's rows, known to within this
EXPIRE_PAGE = 500  # rows of one kind looked at per expiry query


def apply_deletes(db: sqlite3.Connection, deletes: list[int]) -> tuple[int, int]:
    """Delete ``deletes``; returns the rows and the stored bytes that went (exact, not estimated)."""
    rows = size = 0
    for start in range(0, len(deletes), 500):  # one statement per 500: one GIL hand-over, not 500
        chunk = deletes[start:start + 500]
        marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound parameters
        gone = db.execute(f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING length(payload)",  # noqa: S608
                          chunk).fetchall()
        rows += len(gone)
        size += sum(int(r[0]) for r in gone)
    return rows, size


class Bounds:
    """Evictions by the bounds and by age (see the module docstring); state lives in the store."""

    _cfg: OutboxConfig
    _time: Clock
    _db: Db
    seq: Sequence
    _started: float
    _marks_seq: array[int]
    _marks_mono: array[float]
    _mark_from: float
    _deletes: set[int]
    _leased: dict[int, Row]
    _evicted_in_flight: set[int]
    _counted: tuple[int, int]
    _last_commit: float
    disk_rows: int
    disk_bytes: int
    evictions: int

    def _read_head(self) -> None:
        raise NotImplementedError

    def _forget_read_ahead(self) -> None:
        raise NotImplementedError

    def _mark(self, seq: int, mono: float) -> None:
        """Message ``seq`` of this boot accepted at monotonic ``mono``: one mark per MARK_S, the last
        message accepted in it (so that every row has a mark at most MARK_S younger than itself)."""
        if not self._marks_mono or mono - self._mark_from >= MARK_S:
            self._marks_seq.append(seq)
            self._marks_mono.append(mono)
            self._mark_from = mono
        else:
            self._marks_seq[-1], self._marks_mono[-1] = seq, mono

    def _age_of(self, row_id: int, accepted_at: float, trusted: bool) -> float:
        """How old row ``row_id`` is known to be at least: by the monotonic clock for this boot's rows;
        by trusted times for an earlier boot's, and at least this boot's uptime."""
        mono = self._time.monotonic()
        boot, seq = split(row_id)
        if boot == self.seq.boot:
            at = bisect.bisect_left(self._marks_seq, seq)
            return 0.0 if at == len(self._marks_seq) else max(0.0, mono - self._marks_mono[at])
        uptime = max(0.0, mono - self._started)
        if trusted:
            now, now_trusted = self._time.stamp()
            if now_trusted:
                return max(uptime, now - accepted_at)
        return uptime

    def _cutoff(self, rows: int, size: int) -> int | None:
        """The id up to which the oldest telemetry must go for ``rows`` more rows of ``size`` stored bytes to
        fit the bounds: exactly the excess (never a share of the table), found by the key."""
        over = self._over(rows, size)
        if over <= 0:
            return None
        # by the key alone (a filter on priority here makes SQLite sort the whole table); acknowledged rows
        # go in the same transaction; a row of an earlier version's alert in the range stays (priority 0)
        found = self._db.read("SELECT id FROM outbox ORDER BY id LIMIT 1 OFFSET ?", (over + len(self._deletes) - 1,))
        if found:
            return int(found[0][0])
        last = self._db.read("SELECT max(id) FROM outbox")
        return None if not last or last[0][0] is None else int(last[0][0])

    def _over(self, rows: int, size: int) -> int:
        """How many of the oldest rows must go for ``rows`` more of ``size`` stored bytes to fit the bounds."""
        over = self.disk_rows - len(self._deletes) + rows - self._cfg.max_messages
        over_bytes = self.disk_bytes + size - self._cfg.max_bytes
        if over_bytes > 0:
            average = self.disk_bytes / self.disk_rows if self.disk_rows else 1.0
            over = max(over, math.ceil(over_bytes / max(average, 1.0)))
        return over

    def _victims(self, rows: int, size: int) -> list[int]:
        """The ids :meth:`_cutoff` would evict (a bound lowered, no batch to evict with)."""
        over = self._over(rows, size)
        if over <= 0:
            return []
        found = self._db.read("SELECT id FROM outbox WHERE priority > 0 ORDER BY id LIMIT ?",
                              (over + len(self._deletes),))
        return [i for i in (int(r[0]) for r in found) if i not in self._deletes][:over]

    def _enforce_bounds(self) -> None:
        """Over the bounds with nothing to insert (a bound lowered, a flush that could not insert): evict."""
        victims = self._victims(0, 0)
        if victims:
            self._evict_ids(victims)

    def expire(self) -> None:
        """Evict telemetry known to be older than ``max_age_h`` (every ``BATCH_S``; see the module docstring):
        the oldest rows of each kind, in id order, as far as they are known to be too old (a page of them at
        a time: never a scan of the table)."""
        max_age = self._cfg.max_age_h * 3600
        mono = self._time.monotonic()
        this_boot = self.seq.row_id(0)
        if mono - self._started > max_age:  # every row of an earlier boot is older than this boot
            self._expire_page("id < ?", (this_boot,))
        else:
            now, trusted = self._time.stamp()
            if trusted:
                self._expire_page("id < ? AND time_trusted = 1 AND accepted_at < ?", (this_boot, now - max_age))
        known = bisect.bisect_right(self._marks_mono, mono - max_age)  # marks at least max_age old
        if known:
            self._expire_page("id BETWEEN ? AND ?", (this_boot, self.seq.row_id(self._marks_seq[known - 1])))
            del self._marks_seq[:known - 1], self._marks_mono[:known - 1]  # the rows before are gone

    def _expire_page(self, where: str, args: tuple[object, ...]) -> None:
        for priority in (1, 2, 3, 4):
            for _ in range(20):  # a few pages each round; the rest at the next
                select = ("SELECT id, length(payload) FROM (SELECT id, payload, accepted_at, time_trusted "  # noqa: S608
                          f"FROM outbox WHERE priority = ? ORDER BY id LIMIT ?) WHERE {where}")  # ``where``: ours
                evicted = self._evict(select, (priority, EXPIRE_PAGE, *args))
                if evicted < EXPIRE_PAGE:
                    break

    def _evict(self, select: str, args: tuple[object, ...]) -> int:
        """Evict the rows ``select`` finds (ids first); returns how many it found."""
        ids = [int(r[0]) for r in self._db.read(select, args)]  # the oldest telemetry, as far as it must go
        if ids:
            self._evict_ids([i for i in ids if i not in self._deletes])  # acknowledged already: not evictions
        return len(ids)

    def _evict_ids(self, ids: list[int]) -> None:
        if not ids:
            return
        change = [0, 0]

        def apply(db: sqlite3.Connection) -> None:
            change[0], change[1] = apply_deletes(db, ids)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('evictions', ?)",
                       (self.evictions + change[0],))

        if self._db.write(apply, durable=False):
            self._counted = (self.evictions + change[0], self._counted[1])
            self._last_commit = self._time.monotonic()
            self._evicted(ids, change[0], change[1])

    def _evicted(self, ids: list[int], rows: int, size: int) -> None:
        """``ids`` evicted (committed): ``rows`` rows of ``size`` stored bytes went."""
        self.evictions += rows
        log.warning("outbox full: evicted the %d oldest telemetry messages", rows)
        for row_id in ids:
            if self._leased.pop(row_id, None) is not None:
                self._evicted_in_flight.add(row_id)
        self.disk_rows = max(0, self.disk_rows - rows)
        self.disk_bytes = max(0, self.disk_bytes - size)
        self._read_head()
        self._forget_read_ahead()
