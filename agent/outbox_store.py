"""Where the outbox's rows live, and how they get there: RAM, the window log, two SQLite databases.

The core thread owns it (the checkpoint thread only runs
:meth:`OutboxStore.run_checkpoints`); :class:`agent.outbox.Outbox` is the
queue built on it (accept, lease, acknowledge). See :mod:`agent.outbox`
for where a message is at each moment and what each failure loses; here:
opening (boot number, the window log read back, alerts restored and
checked), the write path (window log, batches into the database, deletes),
retrying what the card refused, bounds and evictions, checkpoints.

Time: every timer runs on the monotonic clock; what a row's age is known
to be, and the bounds, are :mod:`agent.outbox_bounds`'s. Opening (the boot
number, the window log read back, alerts restored) is
:mod:`agent.outbox_open`'s.

Counters (``disk_rows``, ``disk_bytes``, the oldest row, what RAM holds)
are kept as rows come and go, counted once at start: nothing a health
message, a ``status`` poll or an eviction runs reads the whole table.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
from array import array
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import statedir
from agent.alert_store import ADDED as ALERT_ADDED
from agent.alert_store import SCHEMA as ALERT_SCHEMA
from agent.alert_store import AlertStore
from agent.boot import BootRecord, Sequence
from agent.clock import Clock
from agent.config import OutboxConfig
from agent.outbox_bounds import Bounds, apply_deletes
from agent.outbox_open import Opening
from agent.rows import Row, RowCheck, pack
from agent.store import Db, checkpoint
from agent.window_log import WindowLog

if TYPE_CHECKING:
    from agent.supervisor import Worker

log = logging.getLogger(__name__)

PAGE = 200  # rows read ahead per query: small, so the core thread is never busy for long
PAGE_SIZE = 1024  # a batch rewrites only the partly filled pages it ends on: small pages, less rewritten
TELEMETRY_WAL = False  # a rollback journal: appended rows are written once (WAL: once, then again at checkpoint)
BATCH_S = 600.0  # telemetry in the window log moves into the database this often ...
BATCH_ROWS = 1000  # ... or at this many rows
LOG_MAX_ROWS = 5000  # the log (and its rows in RAM) never grows beyond, even while the database refuses them
RETRY_S = 2.0  # a card that refused a write is tried again this often
CHECKPOINT_EVERY = 8  # commits of one database between checkpoints (and after each batch)
_STOP = object()
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,          -- boot << 32 | seq
    priority INTEGER NOT NULL,       -- 0 alert ... 4 health: lower goes first
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,           -- agent.rows.pack() of the JSON without its "historical" flag
    accepted_at REAL NOT NULL,       -- Unix time, as the unit's clock had it
    time_trusted INTEGER NOT NULL DEFAULT 0  -- 1: accepted_at is true UTC (0 for rows of earlier versions)
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
ADDED = (("outbox", "time_trusted", "INTEGER NOT NULL DEFAULT 0"),)  # columns a file of an earlier version lacks
ROW_COLUMNS = "priority, id, topic, payload, accepted_at, time_trusted"


def as_clock(clock: Clock | Callable[[], float] | None) -> Clock:
    """The unit's clock; a bare function (a test's) is both its wall and its monotonic clock, trusted."""
    if clock is None:
        return Clock()
    if isinstance(clock, Clock):
        return clock
    return Clock(wall=clock, monotonic=clock, synced=lambda: True)


class OutboxStore(Opening, Bounds):
    """The outbox's storage (see the module docstring)."""

    def __init__(self, path: Path, cfg: OutboxConfig, *, clock: Clock | Callable[[], float] | None = None,
                 on_fault: Callable[[str, str], None] | None = None, on_clear: Callable[[str], None] | None = None,
                 check: RowCheck | None = None) -> None:
        self.path = path
        self._cfg = cfg
        self._time = as_clock(clock)
        self._clock = self._time.wall  # labels only (a file moved aside); never a duration
        self._on_fault = on_fault
        self._on_clear = on_clear
        self._check = check
        self.faults: set[str] = set()
        self.storage = statedir.StorageState(self._fault, self._cleared, directory=path.parent)
        self.alerts_path = path.with_name(f"{path.stem}-alerts{path.suffix}")
        self._db = Db(path, schema=SCHEMA, page_size=PAGE_SIZE, storage=self.storage, on_fault=self._fault,
                      clock=self._clock, wal=TELEMETRY_WAL, added=ADDED)
        self.alerts = AlertStore(Db(self.alerts_path, schema=ALERT_SCHEMA, page_size=4096, storage=self.storage,
                                    on_fault=self._fault, clock=self._clock, added=ALERT_ADDED))
        self._log = WindowLog(path.with_name(path.name + ".log"))
        self._boot = BootRecord(path.with_name(path.name + ".boot"), wall=self._clock)
        self.seq = Sequence()
        self._ram: dict[int, Row] = {}  # telemetry on no disk yet (its window, or the card refused it)
        self._ram_since: float | None = None  # when (monotonic) the oldest RAM row not yet tried was accepted
        self._held = 0  # RAM rows a write to the card could not take (counted, not searched for)
        self._held_below = 0  # ... all of them have ids below this
        self._logged: dict[int, Row] = {}  # in the window log, not yet in the database
        self._logged_since: float | None = None  # monotonic
        self._leased: dict[int, Row] = {}  # handed out to be published, not yet acknowledged or released
        self._evicted_in_flight: set[int] = set()  # evicted while leased: their acknowledgement deletes nothing
        self._deletes: set[int] = set()  # acked, on disk, delete not yet committed
        self._last_commit = self._last_sync = self._retry_at = self._expire_at = 0.0  # monotonic
        self._started = 0.0  # monotonic, at open: this boot's uptime is measured from here
        self._marks_seq = array("q")  # (seq, monotonic) of this boot every MARK_S: the age of its rows
        self._marks_mono = array("d")
        self._mark_from = 0.0  # when the last mark's MARK_S began
        self._head: tuple[int, float, bool] | None = None  # the database's first row: (id, accepted_at, trusted)
        self._replayed = False  # rows read back from the window log may be in the database already
        self._checkpoints: queue.Queue[object] = queue.Queue()
        self.disk_rows = self.disk_bytes = 0
        self.evictions = self.dropped = self.rejected = self.log_appends = 0
        self._counted = (0, 0)  # (evictions, dropped) as last written to the database

    # --- what the queue on top provides ------------------------------------------------

    def _offer(self, row: Row) -> None:
        raise NotImplementedError

    def _forget_read_ahead(self) -> None:
        raise NotImplementedError

    @property
    def _read_ahead_size(self) -> int:
        raise NotImplementedError

    def _from_disk(self, found: Iterable[tuple[Any, ...]], *, alerts: bool = False) -> list[Row]:
        raise NotImplementedError

    def _fault(self, code: str, detail: str) -> None:
        log.error("fault %s: %s", code, detail)
        self.faults.add(code)
        if self._on_fault is not None:
            self._on_fault(code, detail)

    def _cleared(self, code: str) -> None:
        self.faults.discard(code)
        if self._on_clear is not None:
            self._on_clear(code)

    def tick(self) -> None:
        """Called by the core loop: write what is due, retry what the card refused."""
        now = self._time.monotonic()
        if self.storage.failing and now >= self._retry_at:
            self._retry_at = now + RETRY_S
            self._retry()
            return
        if self._ram_since is not None and now - self._ram_since >= self._cfg.commit_window_ms / 1000:
            self._to_log()
        if self._logged and (len(self._logged) >= BATCH_ROWS or now - (self._logged_since or now) >= BATCH_S):
            self._batch()
        elif len(self._deletes) >= 500 or (self._deletes and now - self._last_commit >= 1.0):
            self._commit_deletes()
        if self._log.unsynced and now - self._last_sync >= self._cfg.sync_window_s:
            self._sync_log(now)
        if now >= self._expire_at:
            self._expire_at = now + BATCH_S
            self.expire()
        for db in (self._db, self.alerts.db):
            if db.wal and (db.since_checkpoint >= CHECKPOINT_EVERY
                           or (db.since_checkpoint and now - self._last_commit >= 5.0)):
                db.since_checkpoint = 0
                self._checkpoints.put(db.path)

    def _to_log(self) -> None:
        rows = sorted(self._ram.values())
        self._ram_since = None
        if not rows:
            return
        if len(self._logged) >= LOG_MAX_ROWS and not self._batch():
            self._hold(rows)  # the database refuses the log's rows: the new ones wait in RAM (the ring bounds them)
            return
        try:
            self._log.append(rows)
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)
            self._hold(rows)
            return
        self.log_appends += 1
        self.storage.ok(self._log.path.name)
        self._ram.clear()
        self._held = 0
        if not self._logged:
            self._logged_since = self._time.monotonic()
        self._logged.update((r.id, r) for r in rows)

    def _hold(self, rows: list[Row]) -> None:
        """``rows`` (all of RAM, in id order) outlived their window: the card did not take them."""
        self._held, self._held_below = len(rows), rows[-1].id + 1

    def _unheld(self, row_id: int) -> None:
        """RAM row ``row_id`` left RAM (acknowledged, dropped)."""
        if row_id < self._held_below and self._held:
            self._held -= 1

    def _sync_log(self, now: float) -> None:
        self._last_sync = now
        try:
            self._log.sync()
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)

    def _batch(self) -> bool:
        """The window log's rows into the database, in one transaction; then the log is emptied."""
        rows = sorted(self._logged.values())
        if not self._insert(rows):
            return False
        self._logged.clear()
        self._logged_since = None
        try:
            self._log.clear()
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)
        if self._db.wal:
            self._checkpoints.put(self.path)
            self._db.since_checkpoint = 0
        if self._read_ahead_size > 2 * PAGE:
            self._forget_read_ahead()  # a long outage: do not keep the backlog in RAM
        return True

    def _insert(self, rows: list[Row]) -> bool:
        deletes = list(self._deletes)
        counters = (self.evictions, self.dropped)
        packed = [(r.priority, r.id, r.topic, pack(r.payload), r.accepted_at, int(r.trusted)) for r in rows]
        replayed = self._replayed
        cutoff = self._cutoff(len(packed), sum(len(p[3]) for p in packed))  # evicted in the same transaction
        change = [0, 0, 0, 0, 0, 0]  # rows and bytes inserted, deleted (acknowledged), evicted
        victims: list[int] = []

        def apply(db: sqlite3.Connection) -> None:
            new = packed
            if replayed:  # the window log read back at start: some of its rows may have made it already
                there = set(self._present(db, [p[1] for p in packed]))
                new = [p for p in packed if p[1] not in there]
            db.executemany("INSERT OR IGNORE INTO outbox (priority, id, topic, payload, accepted_at, time_trusted) "
                           "VALUES (?,?,?,?,?,?)", new)
            change[0], change[1] = len(new), sum(len(p[3]) for p in new)
            change[2], change[3] = apply_deletes(db, deletes)
            if cutoff is not None:
                gone = db.execute("DELETE FROM outbox WHERE priority > 0 AND id <= ? RETURNING id, length(payload)",
                                  (cutoff,)).fetchall()
                victims[:] = [int(r[0]) for r in gone]
                change[4], change[5] = len(gone), sum(int(r[1]) for r in gone)
            if counters != self._counted or change[4]:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (("evictions", counters[0] + change[4]), ("dropped", counters[1])))

        if not self._db.write(apply, durable=True):
            return False
        self._counted = (counters[0] + change[4], counters[1])
        self._replayed = False
        self.disk_rows += change[0]
        self.disk_bytes += change[1]
        self._committed(deletes, change[2], change[3])
        if change[4]:
            self._evicted(victims, change[4], change[5])
        elif self._head is None and change[0]:
            self._read_head()
        return True

    @staticmethod
    def _present(db: sqlite3.Connection, ids: list[int]) -> list[int]:
        found = []
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound parameters
            found += [int(r[0]) for r in db.execute(f"SELECT id FROM outbox WHERE id IN ({marks})", chunk)]  # noqa: S608
        return found

    def _commit_deletes(self) -> None:
        deletes = list(self._deletes)
        change = [0, 0]

        def apply(db: sqlite3.Connection) -> None:
            change[0], change[1] = apply_deletes(db, deletes)

        if self._db.write(apply, durable=False):
            self._committed(deletes, change[0], change[1])

    def _committed(self, deletes: list[int], rows: int, size: int) -> None:
        self._last_commit = self._time.monotonic()
        if deletes:
            self._deletes.difference_update(deletes)
            self.disk_rows = max(0, self.disk_rows - rows)
            self.disk_bytes = max(0, self.disk_bytes - size)
            if self._head is not None and rows:
                self._read_head()

    def _retry(self) -> None:
        """The card refused something: try everything pending again; each success clears its part.

        A card that failed (read-only, I/O errors) is let go of entirely (no file of ours open on it, so
        that it can be unmounted and checked) until an in-place rewrite of the boot record succeeds. A boot
        number not on disk yet (the card was full or failing at start) is written as soon as it takes it."""
        failed = statedir.STORAGE_FAILED in self.storage.codes
        if failed:
            self._release()
        if failed or not self._boot.durable:
            try:
                self._boot.probe() if failed else self._boot.persist()
            except OSError as exc:
                self.storage.failed(self._boot.path.name, exc)
                if failed:
                    return
            else:
                self.storage.ok(self._boot.path.name)
        was_open = self._db.is_open
        if self._db.open() and not was_open:
            self._forget_read_ahead()  # the database was closed: read it again from the start
        self.alerts.save()
        self._to_log()
        if self._logged:
            self._batch()
        elif self._deletes:
            self._commit_deletes()
        pending = {self._log.path.name: bool(self._ram), self._db.name: bool(self._logged or self._deletes),
                   self.alerts.db.name: self.alerts.pending}
        for name in list(self.storage.failing):  # nothing left to write there: usable again if there is room
            if not pending.get(name, True) and (statedir.free_bytes(self.path.parent) or 0) > statedir.FULL_BELOW:
                self.storage.ok(name)

    def _release(self) -> None:
        self._db.close()
        self.alerts.db.close()
        self.alerts.mark.close()
        self._log.close()

    def flush(self) -> None:
        """Everything accepted so far into the database now (shutdown), and the deletes committed."""
        rows = sorted([*self._ram.values(), *self._logged.values()])
        if self._insert(rows):
            self._ram.clear()
            self._ram_since = None
            self._held = 0
            self._logged.clear()
            self._logged_since = None
            with contextlib.suppress(OSError):
                self._log.clear()
        else:
            self._to_log()
        self._enforce_bounds()
        self.alerts.save()

    def run_checkpoints(self, worker: Worker) -> None:
        """The "outbox-checkpoint" thread (supervised): WAL checkpoints (an fsync of the database file,
        tens of ms on an SD card) never hold up the core thread, nor an alert."""
        while True:
            worker.beat()
            try:
                item = self._checkpoints.get(timeout=1.0)
            except queue.Empty:
                continue
            if item is _STOP:
                return
            assert isinstance(item, Path)
            try:
                checkpoint(item)
            except sqlite3.Error as exc:
                log.warning("checkpoint of %s failed: %s", item.name, exc)

    @property
    def commits(self) -> int:
        return self._db.commits + self.alerts.db.commits

    def close(self) -> None:
        self._checkpoints.put(_STOP)
        self.flush()
        if self._db.is_open:
            with contextlib.suppress(sqlite3.Error):
                assert self._db.conn is not None
                self._db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        self.alerts.db.close()
        self._log.close()
