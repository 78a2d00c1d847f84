"""Where the outbox's rows live, and how they get there: RAM, the window log, two SQLite databases.

The core thread owns it (the checkpoint thread only runs
:meth:`OutboxStore.run_checkpoints`); :class:`agent.outbox.Outbox` is the
queue built on it (accept, lease, acknowledge). See :mod:`agent.outbox`
for where a message is at each moment and what each failure loses; here:
opening (boot number, the window log read back, alerts restored and
checked), the write path (window log, batches into the database, deletes),
retrying what the card refused, bounds and evictions, checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import statedir
from agent.alert_store import SCHEMA as ALERT_SCHEMA
from agent.alert_store import AlertStore
from agent.boot import JUMP, MAX_BOOT, BootRecord, Sequence
from agent.config import OutboxConfig
from agent.errors import OutboxError
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
FLOOR_LIMIT = (MAX_BOOT - 4 * JUMP) << 32  # a row beyond cannot be ours: it must not push the boot number up
SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,          -- boot << 32 | seq
    priority INTEGER NOT NULL,       -- 0 alert ... 4 health: lower goes first
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,           -- agent.rows.pack() of the JSON without its "historical" flag
    accepted_at REAL NOT NULL        -- Unix time
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxStore:
    """The outbox's storage (see the module docstring)."""

    def __init__(self, path: Path, cfg: OutboxConfig, *, clock: Callable[[], float] = time.time,
                 on_fault: Callable[[str, str], None] | None = None, on_clear: Callable[[str], None] | None = None,
                 check: RowCheck | None = None) -> None:
        self.path = path
        self._cfg = cfg
        self._clock = clock
        self._on_fault = on_fault
        self._on_clear = on_clear
        self._check = check
        self.faults: set[str] = set()
        self.storage = statedir.StorageState(self._fault, self._cleared)
        self.alerts_path = path.with_name(f"{path.stem}-alerts{path.suffix}")
        self._db = Db(path, schema=SCHEMA, page_size=PAGE_SIZE, storage=self.storage, on_fault=self._fault,
                      clock=clock, wal=TELEMETRY_WAL)
        self.alerts = AlertStore(Db(self.alerts_path, schema=ALERT_SCHEMA, page_size=4096, storage=self.storage,
                                    on_fault=self._fault, clock=clock))
        self._log = WindowLog(path.with_name(path.name + ".log"))
        self._boot = BootRecord(path.with_name(path.name + ".boot"))
        self.seq = Sequence()
        self._ram: dict[int, Row] = {}  # telemetry on no disk yet (its window, or the card refused it)
        self._ram_since: float | None = None  # when the oldest RAM row not yet tried was accepted
        self._logged: dict[int, Row] = {}  # in the window log, not yet in the database
        self._logged_since: float | None = None
        self._leased: dict[int, Row] = {}  # handed out to be published, not yet acknowledged or released
        self._deletes: set[int] = set()  # acked, on disk, delete not yet committed
        self._last_commit = self._last_sync = self._retry_at = self._expire_at = 0.0
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

    def open(self) -> None:
        problem = statedir.dir_problem(self.path.parent)
        if problem:
            raise OutboxError(problem)
        for legacy in (".seq", ".seq.tmp"):  # the previous version's sequence blocks: not used any more
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path.with_name(self.path.name + legacy))
        for name in (self._log.path, self._boot.path):
            refused = statedir.refuse_foreign(name, clock=self._clock)
            if refused:
                self._fault("state_file_refused", refused)
        self._db.open()
        self.alerts.db.open()
        floor = max((int(r[0]) >> 32 for db in (self._db, self.alerts.db)  # the boot record lost: not below
                     for r in db.read("SELECT coalesce(max(id), 0) FROM outbox WHERE id < ?", (FLOOR_LIMIT,))),
                    default=0)
        self.seq = Sequence(self._boot.next(floor))
        if self._boot.error is not None:
            self.storage.failed(self._boot.path.name, self._boot.error)
        self.evictions, self.dropped = self._meta("evictions"), self._meta("dropped")
        self._counted = (self.evictions, self.dropped)
        self._replay_log()
        self._count_disk()
        for row in self._from_disk(self.alerts.stored(), alerts=True):
            self.alerts.rows[row.id] = row
            self._offer(row)
        log.info("outbox open: boot %d, %d messages on disk, %d alerts", self.seq.boot, self.disk_rows,
                 len(self.alerts.rows))

    def _replay_log(self) -> None:
        try:
            rows = self._log.read()
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)
            return
        if self._log.torn:
            log.warning("window log: a torn record at its end was dropped (power cut while writing)")
        checked = [r for r in rows if self._check is None or self._check.problem(r) is None]
        if len(checked) < len(rows):
            self.rejected += len(rows) - len(checked)
            self._fault("outbox_rejected", f"{len(rows) - len(checked)} messages of the window log dropped, not "
                                           "published: not this vehicle's")
        rows = checked
        if rows and self._insert(rows):
            with contextlib.suppress(OSError):
                self._log.clear()
        elif rows:
            self._logged = {r.id: r for r in rows}
            self._logged_since = self._clock()
            for row in rows:
                self._offer(row)

    def _meta(self, key: str) -> int:
        found = self._db.read("SELECT value FROM meta WHERE key = ?", (key,))
        return int(found[0][0]) if found else 0

    def _count_disk(self) -> None:
        found = self._db.read("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
        if found:
            self.disk_rows, self.disk_bytes = int(found[0][0]), int(found[0][1])

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
        now = self._clock()
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
        if not rows or (len(self._logged) >= LOG_MAX_ROWS and not self._batch()):
            return  # the database refuses the log's rows: the new ones wait in RAM (the ring bounds them)
        try:
            self._log.append(rows)
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)
            return
        self.log_appends += 1
        self.storage.ok(self._log.path.name)
        self._ram.clear()
        if not self._logged:
            self._logged_since = self._clock()
        self._logged.update((r.id, r) for r in rows)

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
        self._enforce_bounds()
        if self._read_ahead_size > 2 * PAGE:
            self._forget_read_ahead()  # a long outage: do not keep the backlog in RAM
        return True

    def _insert(self, rows: list[Row]) -> bool:
        deletes = list(self._deletes)
        counters = (self.evictions, self.dropped)

        packed = [(r.priority, r.id, r.topic, pack(r.payload), r.accepted_at) for r in rows]

        def apply(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO outbox (priority, id, topic, payload, accepted_at) "
                           "VALUES (?,?,?,?,?)", packed)
            self._apply_deletes(db, deletes)
            if counters != self._counted:
                db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                               (("evictions", counters[0]), ("dropped", counters[1])))

        if not self._db.write(apply, durable=True):
            return False
        self._counted = counters
        self._committed(deletes)
        self.disk_rows += len(rows)
        self.disk_bytes += sum(len(p[3]) for p in packed)
        return True

    def _commit_deletes(self) -> None:
        deletes = list(self._deletes)
        if self._db.write(lambda db: self._apply_deletes(db, deletes), durable=False):
            self._committed(deletes)

    @staticmethod
    def _apply_deletes(db: sqlite3.Connection, deletes: list[int]) -> None:
        for start in range(0, len(deletes), 500):  # one statement per 500: one GIL hand-over, not 500
            chunk = deletes[start:start + 500]
            marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound parameters
            db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608

    def _committed(self, deletes: list[int]) -> None:
        self._last_commit = self._clock()
        if deletes:
            self._deletes.difference_update(deletes)
            average = self.disk_bytes / self.disk_rows if self.disk_rows else 0
            self.disk_rows = max(0, self.disk_rows - len(deletes))
            self.disk_bytes = 0 if not self.disk_rows else max(0, int(self.disk_bytes - average * len(deletes)))

    def _retry(self) -> None:
        """The card refused something: try everything pending again; each success clears its part.

        A card that failed (read-only, I/O errors) is let go of entirely (no file of ours open on it, so
        that it can be unmounted and checked) until an in-place rewrite of the boot record succeeds."""
        if statedir.STORAGE_FAILED in self.storage.codes:
            self._release()
            try:
                self._boot.probe()
            except OSError as exc:
                self.storage.failed(self._boot.path.name, exc)
                return
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
            if not pending.get(name, True) and (statedir.free_bytes(self.path.parent) or 0) > 256 * 1024:
                self.storage.ok(name)

    def _release(self) -> None:
        self._db.close()
        self.alerts.db.close()
        self._log.close()

    def flush(self) -> None:
        """Everything accepted so far into the database now (shutdown), and the deletes committed."""
        rows = sorted([*self._ram.values(), *self._logged.values()])
        if self._insert(rows):
            self._ram.clear()
            self._ram_since = None
            self._logged.clear()
            self._logged_since = None
            with contextlib.suppress(OSError):
                self._log.clear()
        else:
            self._to_log()
        self._enforce_bounds()
        self.alerts.save()

    def _enforce_bounds(self) -> None:
        over_rows = self.disk_rows - self._cfg.max_messages
        if over_rows > 0 or self.disk_bytes > self._cfg.max_bytes:
            self._evict("SELECT id, length(payload) FROM outbox WHERE priority > 0 ORDER BY id LIMIT ?",
                        (max(over_rows, self.disk_rows // 20, 1),))

    def expire(self) -> None:
        """Evict telemetry older than ``max_age_h`` (every ``BATCH_S``): the oldest rows of each kind, in
        id order, as far as they are too old (a page of them at a time: never a scan of the table)."""
        cutoff = self._clock() - self._cfg.max_age_h * 3600
        for priority in (1, 2, 3, 4):
            self._evict("SELECT id, length(payload) FROM (SELECT id, payload, accepted_at FROM outbox "
                        "WHERE priority = ? ORDER BY id LIMIT 500) WHERE accepted_at < ?", (priority, cutoff))

    def _evict(self, select: str, args: tuple[object, ...]) -> int:
        found = self._db.read(select, args)  # (id, stored size): the oldest telemetry
        ids = [int(r[0]) for r in found]
        if not ids:
            return 0
        evictions = self.evictions + len(ids)

        def apply(db: sqlite3.Connection) -> None:
            self._apply_deletes(db, ids)
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('evictions', ?)", (evictions,))

        if not self._db.write(apply, durable=False):
            return 0
        self.evictions = evictions
        self._counted = (evictions, self._counted[1])
        log.warning("outbox full: evicted the %d oldest telemetry messages", len(ids))
        for row_id in ids:
            self._leased.pop(row_id, None)
            self._deletes.discard(row_id)
        self.disk_rows = max(0, self.disk_rows - len(ids))
        self.disk_bytes = max(0, self.disk_bytes - sum(int(r[1]) for r in found))
        self._forget_read_ahead()
        return len(ids)

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
