"""One SQLite database file under the state dir, and what happens when the card refuses it.

The connection belongs to the core thread; the checkpoint thread opens
its own for each checkpoint (:func:`checkpoint`).

- Opened only after the file and SQLite's companions (``-wal``, ``-shm``,
  ``-journal``) are checked (:func:`agent.statedir.refuse_foreign`) and
  the file is there, 0600 (SQLite gives ``-wal`` and ``-shm`` its mode).
- ``secure_delete`` (deleted rows are zeroed, in pages and free pages).
  The alerts' database is in WAL mode (an alert's commit is one append
  and one fsync), with no automatic checkpoint: the checkpoint thread runs
  them, PASSIVE (never holding up an alert's commit), and with
  ``journal_size_limit`` 0 the first write after a checkpoint starts the
  WAL afresh and truncates it: no old frame keeps a deleted row. The telemetry database (``wal=False``) has a
  rollback journal, truncated at each commit: a batch of appended rows is
  written once, where WAL writes it twice (the frame, then the checkpoint).
- :meth:`Db.write` is one transaction: it commits, or leaves the database
  as it was and returns False after reporting the storage error
  (``disk_full`` / ``storage_failed``). The caller keeps what it meant to
  write and tries again later. On ``storage_failed`` the connection is
  closed, so that a card gone read-only can be unmounted and checked; it is
  opened again on the next attempt.
- A file an earlier version made gets the columns added since
  (``added``: ``ALTER TABLE ... ADD COLUMN`` with a constant default, which
  rewrites no row).
- A database that does not open as one (corrupt) is moved aside
  (``*.corrupt-<time>``), replaced by a new one and reported
  (``outbox_corrupt``): never a crash loop, never a silent delete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import statedir

log = logging.getLogger(__name__)

COMPANIONS = ("-wal", "-shm", "-journal")
_CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB


class Db:
    def __init__(self, path: Path, *, schema: str, page_size: int, storage: statedir.StorageState,
                 on_fault: Callable[[str, str], None], clock: Callable[[], float] = time.time,
                 wal: bool = True, added: tuple[tuple[str, str, str], ...] = ()) -> None:
        self.path = path
        self._added = added  # (table, column, declaration): columns added since a file could have been made
        self.name = path.name
        self._schema = schema
        self._page_size = page_size
        self.wal = wal
        self._storage = storage
        self._on_fault = on_fault
        self._clock = clock
        self.conn: sqlite3.Connection | None = None
        self.commits = 0
        self.since_checkpoint = 0
        self.moved_aside = False  # this start found the file unreadable and started a new one (reported)

    @property
    def is_open(self) -> bool:
        return self.conn is not None

    # --- opening ------------------------------------------------------------------

    def open(self) -> bool:
        """Open (or reopen) the file; False, with the fault reported, when the card refuses it."""
        if self.conn is not None:
            return True
        try:
            for suffix in ("", *COMPANIONS):
                refused = statedir.refuse_foreign(Path(str(self.path) + suffix), clock=self._clock)
                if refused:
                    self._on_fault("state_file_refused", refused)
            statedir.precreate(self.path)
            try:
                self.conn = self._connect()
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorcode", 11) & 0xFF not in _CORRUPT and "integrity" not in str(exc):
                    raise
                self._move_aside(f"is unreadable ({exc})")
                statedir.precreate(self.path)
                self.conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            self._storage.failed(self.name, exc)
            self.conn = None
            return False
        return True

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=2000")  # another process reading it (a technician's sqlite3)
            db.execute(f"PRAGMA page_size={int(self._page_size)}")  # takes effect on a new file only
            db.execute(f"PRAGMA journal_mode={'WAL' if self.wal else 'TRUNCATE'}")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA secure_delete=ON")
            db.execute("PRAGMA journal_size_limit=0")
            db.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it, never inside an alert's commit
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            db.executescript(self._schema)
            for table, column, declaration in self._added:  # a file of an earlier version: the column added
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, why: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))
        aside = self.path.with_name(f"{self.name}.corrupt-{stamp}")
        for suffix in ("", *COMPANIONS):
            source = Path(str(self.path) + suffix)
            if os.path.lexists(source):
                os.replace(source, Path(str(aside) + suffix))
        self.moved_aside = True
        self._on_fault("outbox_corrupt", f"{self.name} {why}; moved aside to {aside.name}, started a new one")

    # --- using --------------------------------------------------------------------

    def write(self, apply: Callable[[sqlite3.Connection], None], *, durable: bool = True) -> bool:
        """``apply`` in one transaction, fsynced when ``durable``; False (reported) when the card refused it."""
        if not self.open():
            return False
        db = self.conn
        assert db is not None
        try:
            if not durable:
                db.execute("PRAGMA synchronous=NORMAL")  # a lost delete is one duplicate after a power cut
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    apply(db)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous=FULL")
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return False
        self.commits += 1
        self.since_checkpoint += 1
        self._storage.ok(self.name)
        return True

    def read(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query; none while the database cannot be read (the fault is reported)."""
        if self.conn is None:
            return []
        try:
            return self.conn.execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as exc:
            self._failed(exc)
            return []

    def _failed(self, exc: BaseException) -> None:
        code = self._storage.failed(self.name, exc)
        if code == statedir.STORAGE_FAILED:
            self.close()  # let go of the card: it can be unmounted, checked and mounted again

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None


def checkpoint(path: Path) -> None:
    """Copy the WAL into the database (the checkpoint thread; a connection of its own). PASSIVE: it never
    waits for, nor holds up, the core's writes; the next write then starts the WAL afresh."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, isolation_level=None, timeout=1.0)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()
