"""The outbox: every accepted message stays here until the broker has acknowledged it.

Owned and used by the core thread only (SQLite connections are not shared).
A transaction in Telegraf's terms: the core *accepts* a message, the uplink
*leases* rows to publish, and each row is either *acked* (PUBACK: deleted) or
*released* (the link dropped: offered again).

Durability, and the SD card:
- an alert is inserted and committed with ``synchronous=FULL`` (fsync) before
  :meth:`accept` returns: accepted means on disk. Alerts (and the open
  emergency's state) live in a database file of their own,
  ``<name>-alerts.sqlite``, so that their fsync flushes only their own WAL,
  not the telemetry a backlog drain has just written (measured: that cost up
  to 57 ms per alert under load);
- telemetry is held in RAM for at most the commit window
  (``outbox.commit_window_ms``). Whatever the broker has not acknowledged by
  then is written in one transaction. Online, a position is usually acked
  within milliseconds and never touches the card; offline, one commit per
  window. A kill -9 or power cut loses at most one window of telemetry;
- acknowledged rows are deleted in batches too: a crash before that commit
  only means a duplicate after restart (delivery is at-least-once);
- sequence numbers are reserved in blocks in a separate file (fsynced), so
  they are never reused, even if the database is lost.

Bounds: ``max_messages``, ``max_bytes`` and ``max_age_h``. When over, the
oldest telemetry is evicted, never an alert, and evictions are counted
(persistently). A corrupt database is moved aside (``*.corrupt-<time>``),
replaced by a new one and reported as a fault: never a crash loop, never a
silent delete.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from agent.config import OutboxConfig
from agent.errors import OutboxError
from agent.messages import Priority

if TYPE_CHECKING:
    from agent.supervisor import Worker

log = logging.getLogger(__name__)

SEQ_BLOCK = 1000
_STOP = object()
PAGE = 200  # rows read ahead per query: small, so the core thread is never busy for long
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,          -- the message's sequence number
    priority INTEGER NOT NULL,       -- 0 alert ... 4 health: lower goes first
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,           -- JSON without its closing "historical" flag
    accepted_at REAL NOT NULL        -- Unix time
);
CREATE INDEX IF NOT EXISTS outbox_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True, order=True)
class Row:
    priority: int
    id: int
    topic: str = field(compare=False)
    payload: bytes = field(compare=False)
    accepted_at: float = field(compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.priority, self.id)


class SeqStore:
    """Sequence numbers, reserved ``SEQ_BLOCK`` at a time in an fsynced file.

    Thread-safe: the uplink thread takes one for the last will.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next = 1
        self._reserved = 0
        self._lock = threading.Lock()

    def start_after(self, floor: int) -> None:
        stored = 0
        with contextlib.suppress(OSError, ValueError):
            stored = int(self.path.read_text().strip() or 0)
        self._next = max(stored, floor) + 1
        self._reserved = self._next - 1

    def take(self) -> int:
        with self._lock:
            if self._next > self._reserved:
                self._reserve(self._next + SEQ_BLOCK - 1)
            seq = self._next
            self._next += 1
            return seq

    @property
    def last(self) -> int:
        return self._next - 1

    def _reserve(self, upto: int) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{upto}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._reserved = upto


class Outbox:
    """A durable, bounded, prioritised queue of messages awaiting PUBACK."""

    def __init__(
        self,
        path: Path,
        cfg: OutboxConfig,
        *,
        clock: Callable[[], float] = time.time,
        on_fault: Callable[[str, str], None] | None = None,
    ) -> None:
        self.path = path
        self._cfg = cfg
        self._clock = clock
        self._on_fault = on_fault
        self._db: sqlite3.Connection | None = None
        self._alerts_db: sqlite3.Connection | None = None
        self.alerts_path = path.with_name(f"{path.stem}-alerts{path.suffix}")
        self._alert_rows: dict[int, Row] = {}  # accepted alerts not yet acknowledged (few: all in memory)
        self.seq = SeqStore(path.with_name(path.name + ".seq"))
        self._ram: dict[int, Row] = {}  # accepted telemetry not yet on disk
        self._ram_since: float | None = None  # when the oldest RAM row was accepted
        self._ready: list[Row] = []  # heap: RAM rows and disk rows read ahead, not leased
        self._in_ready: set[int] = set()
        self._cursor: tuple[int, int] = (-1, -1)  # the last (priority, id) read ahead from disk
        self._disk_done = False  # every disk row up to now has been read ahead
        self._leased: dict[int, Row] = {}
        self._deletes: set[int] = set()  # acked, on disk, delete not yet committed
        self._delete_bytes = 0
        self._last_commit = 0.0
        self._since_checkpoint = 0
        self._checkpoints: queue.Queue[object] = queue.Queue()
        self.disk_rows = 0
        self.disk_bytes = 0
        self.evictions = 0
        self.faults: list[str] = []
        self.commits = 0

    # --- opening ----------------------------------------------------------

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open_db(self.path)
        self._alerts_db = self._open_db(self.alerts_path)
        floor = 0
        for db in (self._db, self._alerts_db):
            floor = max(floor, int(db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]))
        for found in self._alerts_db.execute("SELECT priority, id, topic, payload, accepted_at FROM outbox"):
            row = Row(*found)
            self._alert_rows[row.id] = row
            self._offer(row)
        self.seq.start_after(max(floor, self._meta("seq_floor")))
        self.evictions = self._meta("evictions")
        self._count_disk()
        log.info("outbox open: %d messages waiting", self.disk_rows)

    def run_checkpoints(self, worker: Worker) -> None:
        """The "outbox-checkpoint" thread (supervised), with a connection of its own: WAL
        checkpoints (an fsync of the database file, tens of ms on an SD card) never hold up
        the core thread, nor an alert."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while True:
                worker.beat()
                try:
                    item = self._checkpoints.get(timeout=1.0)
                except queue.Empty:
                    continue
                if item is _STOP:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("outbox checkpoint failed: %s", exc)
        finally:
            db.close()

    def _open_db(self, path: Path) -> sqlite3.Connection:
        try:
            return self._connect(path)
        except sqlite3.DatabaseError as exc:
            self._move_aside(path, f"is unreadable ({exc})")
            return self._connect(path)

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=4194304")
            db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run from tick(), never inside an alert's commit
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self, path: Path, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(str(path) + suffix)
            if source.exists():
                os.replace(source, Path(str(aside) + suffix))
        self._fault("outbox_corrupt", f"outbox database {why}; moved aside to {aside.name}, started a new one")

    def _fault(self, code: str, detail: str) -> None:
        log.error("fault %s: %s", code, detail)
        if code not in self.faults:
            self.faults.append(code)
        if self._on_fault is not None:
            self._on_fault(code, detail)

    def _db_(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def _scalar(self, sql: str, *args: object) -> object:
        return self._db_().execute(sql, args).fetchone()[0]

    def _meta(self, key: str) -> int:
        row = self._db_().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _count_disk(self) -> None:
        rows, size = self._db_().execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        self.disk_rows, self.disk_bytes = int(rows), int(size)

    # --- accepting ----------------------------------------------------------

    def accept(self, seq: int, priority: int, topic: str, payload: bytes) -> None:
        """Take a message. An alert is on disk (fsynced) when this returns."""
        row = Row(priority, seq, topic, payload, self._clock())
        if priority == Priority.ALERT:
            self._accept_alert(row)
            return
        if not self._ram:
            self._ram_since = row.accepted_at
        self._ram[seq] = row
        self._offer(row)

    def _accept_alert(self, row: Row) -> None:
        """Alerts live in a database file of their own: their fsync flushes only their own
        small WAL, never the telemetry a backlog drain has just written."""
        self._alert_rows[row.id] = row
        self._offer(row)
        db = self._alerts_()
        try:
            with self._transaction(db):
                db.execute("INSERT OR IGNORE INTO outbox (id, priority, topic, payload, accepted_at) "
                           "VALUES (?,?,?,?,?)", (row.id, row.priority, row.topic, row.payload, row.accepted_at))
        except sqlite3.OperationalError as exc:  # disk full, I/O error: still published from memory
            self._fault("outbox_write_failed", f"alert {row.id} kept in memory only: {exc}")

    def put_state(self, key: str, value: str) -> None:
        """Small durable state (the open emergency...), committed with fsync, beside the alerts."""
        db = self._alerts_()
        with self._transaction(db):
            db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))

    def get_state(self, key: str) -> str | None:
        row = self._alerts_().execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def delete_state(self, key: str) -> None:
        db = self._alerts_()
        with self._transaction(db):
            db.execute("DELETE FROM state WHERE key = ?", (key,))

    def _alerts_(self) -> sqlite3.Connection:
        if self._alerts_db is None:
            raise OutboxError("outbox is not open")
        return self._alerts_db

    # --- leasing and acknowledging -----------------------------------------

    def lease(self, limit: int, *, max_priority: int | None = None) -> list[Row]:
        """Up to ``limit`` rows not in flight, in (priority, id) order."""
        out: list[Row] = []
        while len(out) < limit:
            # disk rows after the cursor sort after it: read ahead until the heap's top is safe
            if not self._disk_done and (not self._ready or self._ready[0].key > self._cursor):
                self._read_ahead()
                continue
            if not self._ready:
                break
            row = self._ready[0]
            if max_priority is not None and row.priority > max_priority:
                break
            heapq.heappop(self._ready)
            self._in_ready.discard(row.id)
            if row.id in self._leased or row.id in self._deletes:
                continue
            self._leased[row.id] = row
            out.append(row)
        return out

    def newest(self, priority: int) -> Row | None:
        """The most recent row of ``priority`` not in flight (the freshest position)."""
        candidates = [r for r in self._ram.values() if r.priority == priority and r.id not in self._leased]
        if candidates:
            row = max(candidates, key=lambda r: r.id)
        else:
            found = self._db_().execute(
                "SELECT priority, id, topic, payload, accepted_at FROM outbox WHERE priority = ? "
                "ORDER BY id DESC LIMIT 1", (priority,)).fetchone()
            if found is None or found[1] in self._leased or found[1] in self._deletes:
                return None
            row = Row(*found)
        self._leased[row.id] = row
        return row

    def ack(self, ids: Iterable[int]) -> None:
        alerts = []
        for row_id in ids:
            row = self._leased.pop(row_id, None)
            if self._alert_rows.pop(row_id, None) is not None:
                alerts.append(row_id)
                continue
            if self._ram.pop(row_id, None) is None and row_id not in self._deletes:
                self._deletes.add(row_id)
                self._delete_bytes += len(row.payload) if row is not None else 0
        if not self._ram:
            self._ram_since = None
        if alerts:  # not fsynced: a delete lost in a power cut is one duplicate alert
            db = self._alerts_()
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                with self._transaction(db):
                    db.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in alerts))
            finally:
                db.execute("PRAGMA synchronous=FULL")

    def release(self, ids: Iterable[int]) -> None:
        """The link dropped before these were acknowledged: offer them again."""
        for row_id in ids:
            row = self._leased.pop(row_id, None)
            if row is not None:
                self._offer(row)

    def release_all(self) -> None:
        self.release(list(self._leased))

    def _offer(self, row: Row) -> None:
        if row.id not in self._in_ready:
            heapq.heappush(self._ready, row)
            self._in_ready.add(row.id)

    def _read_ahead(self) -> bool:
        """Read the next page of disk rows after the cursor; False when there is none."""
        rows = self._db_().execute(
            "SELECT priority, id, topic, payload, accepted_at FROM outbox "
            "WHERE (priority, id) > (?, ?) ORDER BY priority, id LIMIT ?",
            (*self._cursor, PAGE),
        ).fetchall()
        if len(rows) < PAGE:
            self._disk_done = True
        if not rows:
            return False
        self._cursor = (rows[-1][0], rows[-1][1])
        for found in rows:
            if found[1] not in self._leased and found[1] not in self._deletes:
                self._offer(Row(*found))
        return True

    def _forget_read_ahead(self) -> None:
        """Disk changed under the read-ahead: keep RAM rows and alerts, re-read the disk from the start."""
        self._ready = [r for r in (*self._ram.values(), *self._alert_rows.values()) if r.id not in self._leased]
        heapq.heapify(self._ready)
        self._in_ready = {r.id for r in self._ready}
        self._cursor = (-1, -1)
        self._disk_done = False

    # --- time passing -----------------------------------------------------------

    def tick(self) -> None:
        """Called by the core loop: commit what the window says is due."""
        now = self._clock()
        window = self._cfg.commit_window_ms / 1000
        if self._ram_since is not None and now - self._ram_since >= window:
            self.flush()
        elif len(self._deletes) >= 500 or (self._deletes and now - self._last_commit >= window):
            self._write([])
        if self._since_checkpoint >= 50 or (self._since_checkpoint and now - self._last_commit >= 10 * window):
            self._since_checkpoint = 0
            self._checkpoints.put(None)

    def flush(self) -> None:
        """Commit every RAM row and pending delete now (window expiry, shutdown)."""
        rows = sorted(self._ram.values())
        self._ram.clear()
        self._ram_since = None
        self._write(rows)

    def _write(self, rows: list[Row], *, with_deletes: bool = True) -> None:
        db = self._db_()
        deletes = list(self._deletes) if with_deletes else []
        durable = bool(rows)  # a lost delete only means a duplicate after a power cut: no fsync for it
        try:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")
            with self._transaction(db):
                self._apply(db, rows, deletes)
        except sqlite3.OperationalError as exc:
            if "full" not in str(exc).lower():
                raise
            self._on_disk_full(rows, deletes)
            return
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")
        self._applied(rows, deletes)

    @staticmethod
    def _apply(db: sqlite3.Connection, rows: list[Row], deletes: list[int]) -> None:
        for start in range(0, len(deletes), 500):  # one statement per 500: one GIL hand-over, not 500
            chunk = deletes[start:start + 500]
            marks = ",".join("?" * len(chunk))  # placeholders only: the ids are bound parameters
            db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
        if rows:
            db.executemany(
                "INSERT OR IGNORE INTO outbox (id, priority, topic, payload, accepted_at) VALUES (?,?,?,?,?)",
                ((r.id, r.priority, r.topic, r.payload, r.accepted_at) for r in rows),
            )

    def _applied(self, rows: list[Row], deletes: list[int]) -> None:
        self.commits += 1
        self._since_checkpoint += 1
        self._last_commit = self._clock()
        if deletes:
            self._deletes.difference_update(deletes)
            self.disk_rows -= len(deletes)
            self.disk_bytes = max(0, self.disk_bytes - self._delete_bytes)
            self._delete_bytes = 0
        if rows:
            self.disk_rows += len(rows)
            self.disk_bytes += sum(len(r.payload) for r in rows)
            if len(self._ready) > 2 * PAGE:
                self._forget_read_ahead()  # a long outage: do not keep the backlog in RAM
        self._enforce_bounds()

    def _on_disk_full(self, rows: list[Row], deletes: list[int]) -> None:
        """Disk full: make room by evicting the oldest telemetry; alerts must get in."""
        self._fault("disk_full", "outbox write failed: disk full; evicting the oldest telemetry")
        alerts = [r for r in rows if r.priority == Priority.ALERT]
        dropped = [r for r in rows if r.priority != Priority.ALERT]
        try:
            self._evict_oldest(max(100, len(rows)))
            db = self._db_()
            with self._transaction(db):
                self._apply(db, alerts, deletes)
        except sqlite3.OperationalError as exc:
            for row in alerts:  # keep them in RAM: still published, retried at the next commit
                self._ram[row.id] = row
                self._ram_since = self._ram_since or row.accepted_at
            self._fault("outbox_write_failed", f"alert kept in memory only: {exc}")
            return
        for row in dropped:
            self._in_ready.discard(row.id)
        self._count_evictions(len(dropped))
        self._applied(alerts, deletes)

    @contextlib.contextmanager
    def _transaction(self, db: sqlite3.Connection) -> Iterator[None]:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # --- bounds -----------------------------------------------------------

    def _enforce_bounds(self) -> None:
        over_rows = self.disk_rows - self._cfg.max_messages
        if over_rows > 0 or self.disk_bytes > self._cfg.max_bytes:
            self._evict_oldest(max(over_rows, self.disk_rows // 20, 1))

    def expire(self) -> None:
        """Evict telemetry older than ``max_age_h`` (the core calls this now and then)."""
        cutoff = self._clock() - self._cfg.max_age_h * 3600
        self._evict("SELECT id FROM outbox WHERE priority > 0 AND accepted_at < ?", (cutoff,))

    def _evict_oldest(self, count: int) -> None:
        evicted = self._evict("SELECT id FROM outbox WHERE priority > 0 ORDER BY id LIMIT ?", (count,))
        if evicted:
            log.warning("outbox full: evicted the %d oldest telemetry messages", evicted)

    def _evict(self, select: str, args: tuple[object, ...]) -> int:
        db = self._db_()
        with self._transaction(db):
            ids = [r[0] for r in db.execute(select, args)]
            db.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in ids))
            self._bump_evictions(db, len(ids))
        if ids:
            for row_id in ids:
                self._leased.pop(row_id, None)
                self._deletes.discard(row_id)
            self._count_disk()
            self._forget_read_ahead()
        return len(ids)

    def _bump_evictions(self, db: sqlite3.Connection, count: int) -> None:
        if count:
            self.evictions += count
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('evictions', ?)", (self.evictions,))

    def _count_evictions(self, count: int) -> None:
        if count:
            db = self._db_()
            with self._transaction(db):
                self._bump_evictions(db, count)

    # --- figures --------------------------------------------------------------

    @property
    def depth(self) -> int:
        return self.disk_rows - len(self._deletes) + len(self._ram) + len(self._alert_rows)

    @property
    def alerts_waiting(self) -> int:
        """Alerts accepted and not yet acknowledged by the broker."""
        return len(self._alert_rows)

    @property
    def in_flight(self) -> int:
        return len(self._leased)

    def oldest_age_s(self) -> float | None:
        oldest = self._scalar("SELECT min(accepted_at) FROM outbox")
        times = [r.accepted_at for r in (*self._ram.values(), *self._alert_rows.values())]
        if isinstance(oldest, float | int):
            times.append(float(oldest))
        return None if not times else max(0.0, self._clock() - min(times))

    def stats(self) -> dict[str, float | int | None]:
        return {
            "depth": self.depth,
            "on_disk": self.disk_rows,
            "bytes": self.disk_bytes,
            "oldest_age_s": self.oldest_age_s(),
            "evictions": self.evictions,
            "alerts": len(self._alert_rows),
            "in_flight": len(self._leased),
            "commits": self.commits,
        }

    def close(self) -> None:
        self._checkpoints.put(_STOP)
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.flush()
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_floor', ?)",
                                 (self.seq.last,))
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            self._db = None
        if self._alerts_db is not None:
            self._alerts_db.close()
            self._alerts_db = None
