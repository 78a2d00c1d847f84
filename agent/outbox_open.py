"""Opening the outbox's storage at start: the state files checked, the boot number, what the card kept.

Part of the outbox's storage (:class:`agent.outbox_store.OutboxStore` mixes
it in; the core thread runs it once, before anything is accepted). It owns
the order of a start: the state dir checked, files left by earlier versions
removed, foreign files moved aside, both databases opened, this start's
boot number chosen (:mod:`agent.boot`), the counters read once, the window
log read back into the database, the unacknowledged alerts restored and
checked. A storage error on the way is a fault, never an exception: the
daemon starts on a full, read-only or failing card.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent import statedir
from agent.alert_store import AlertStore
from agent.boot import CEILING, BootRecord, Sequence
from agent.clock import Clock
from agent.errors import OutboxError
from agent.rows import Row, RowCheck
from agent.store import Db
from agent.window_log import WindowLog

log = logging.getLogger(__name__)

FLOOR_LIMIT = CEILING << 32  # a row beyond cannot be ours: it must not push the boot number up
BOOT_KEY = "boot"  # in the alerts database's state: the last start's number (the boot record's backup)


class Opening:
    """The start of the outbox's storage (see the module docstring); state lives in the store."""

    path: Path
    _time: Clock
    _clock: Callable[[], float]
    _db: Db
    alerts: AlertStore
    _log: WindowLog
    _boot: BootRecord
    seq: Sequence
    storage: statedir.StorageState
    _check: RowCheck | None
    _started: float
    _counted: tuple[int, int]
    _replayed: bool
    _logged: dict[int, Row]
    _logged_since: float | None
    _head: tuple[int, float, bool] | None
    disk_rows: int
    disk_bytes: int
    evictions: int
    dropped: int
    rejected: int

    def _fault(self, code: str, detail: str) -> None:
        raise NotImplementedError

    def _offer(self, row: Row) -> None:
        raise NotImplementedError

    def _insert(self, rows: list[Row]) -> bool:
        raise NotImplementedError

    def _from_disk(self, found: Iterable[tuple[Any, ...]], *, alerts: bool = False) -> list[Row]:
        raise NotImplementedError

    def open(self) -> None:
        problem = statedir.dir_problem(self.path.parent)
        if problem:
            raise OutboxError(problem)
        ours = (self._db.path, self.alerts.db.path, self._log.path, self._boot.path)
        legacy = [self.path.with_name(self.path.name + end) for end in (".seq", ".seq.tmp")]
        first = not any(os.path.lexists(p) for p in (*ours, *legacy))  # a new unit, or a wiped/replaced card
        upgrade = any(os.path.lexists(p) for p in legacy)  # a version before boot records: none to lose
        for path in legacy:  # the previous version's sequence blocks: not used any more
            self._remove_legacy(path)
        for name in (self._log.path, self._boot.path, self.alerts.mark.path):
            try:
                refused = statedir.refuse_foreign(name, clock=self._clock)
            except OSError as exc:  # cannot be moved aside (read-only card): never opened either (O_NOFOLLOW)
                self.storage.failed(name.name, exc)
                continue
            if refused:
                self._fault("state_file_refused", refused)
        self._started = self._time.monotonic()
        self._db.open()
        marked = self.alerts.mark.read()
        lost = self.alerts.mark.wal_problem(marked) if marked else None
        kept = self.alerts.mark.keep_copy(self._stamp()) if lost else ""  # before SQLite writes to it
        self.alerts.db.open()
        floor = max((int(r[0]) >> 32 for db in (self._db, self.alerts.db)  # the boot record lost: not below
                     for r in db.read("SELECT coalesce(max(id), 0) FROM outbox WHERE id < ?", (FLOOR_LIMIT,))),
                    default=0)
        noted = self.alerts.get_state(BOOT_KEY) or ""
        if marked and not lost and self.alerts.db.is_open and not self.alerts.db.moved_aside and marked[2] > (
                int(noted) if noted.isdigit() else 0):  # emptied, replaced, or its WAL's last commits lost
            lost = (f"it notes {f'boot {noted}' if noted.isdigit() else 'no start'} where the last start noted "
                    f"boot {marked[2]}")
            self.alerts.db.close()  # copying opens and closes its files: that would drop SQLite's POSIX locks
            kept = self.alerts.mark.keep_copy(self._stamp())
            self.alerts.db.open()
        if noted.isdigit() and int(noted) < CEILING:  # every start notes its number: the record's backup
            floor = max(floor, int(noted))
        self.seq = Sequence(self._boot.next(floor, first=first or upgrade))
        self.alerts.mark.boot = self.seq.boot
        self.alerts.put_state(BOOT_KEY, str(self.seq.boot))
        if lost:
            self._fault("outbox_corrupt", f"{self.alerts.db.name} lost committed data ({lost}): an open emergency "
                                          f"and alerts not yet published may be lost with it; {kept}")
        if self._boot.lost is not None:
            self._fault("boot_record_lost", self._boot.lost)
        if self._boot.error is not None:
            self.storage.failed(self._boot.path.name, self._boot.error)
        self.evictions, self.dropped = self._meta("evictions"), self._meta("dropped")
        self._counted = (self.evictions, self.dropped)
        self._count_disk()
        self._replay_log()
        for row in self._from_disk(self.alerts.stored(), alerts=True):
            self.alerts.rows[row.id] = row
            self._offer(row)
        log.info("outbox open: boot %d, %d messages on disk, %d alerts", self.seq.boot, self.disk_rows,
                 len(self.alerts.rows))

    def _stamp(self) -> str:
        return time.strftime("%Y%m%dT%H%M%S", time.gmtime(self._clock()))

    def _remove_legacy(self, path: Path) -> None:
        """An earlier version's file, removed if it is there; a card that refuses is no reason not to start."""
        if not os.path.lexists(path):
            return
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s, left by an earlier version (%s): removed at a later start", path.name,
                        statedir.describe(exc))

    def _replay_log(self) -> None:
        try:
            rows = self._log.read()
        except OSError as exc:
            self.storage.failed(self._log.path.name, exc)
            return
        if self._log.torn:
            log.warning("window log: a torn record at its end was dropped (power cut while writing)")
        if self._log.damaged is not None:
            self._log_damaged(self._log.damaged)
        checked = [r for r in rows if self._check is None or self._check.problem(r) is None]
        if len(checked) < len(rows):
            self.rejected += len(rows) - len(checked)
            self._fault("outbox_rejected", f"{len(rows) - len(checked)} messages of the window log dropped, not "
                                           "published: not this vehicle's")
        rows = checked
        self._replayed = bool(rows)
        if rows and self._insert(rows):
            with contextlib.suppress(OSError):
                self._log.clear()
        elif rows:
            self._logged = {r.id: r for r in rows}
            self._logged_since = self._time.monotonic()
            for row in rows:
                self._offer(row)

    def _log_damaged(self, what: str) -> None:
        """Records in the middle of the window log unreadable: reported, the file kept for a technician."""
        name = self._log.path.name
        try:
            aside = f"moved aside to {self._log.move_aside(time.strftime('%Y%m%dT%H%M%S', time.gmtime(self._clock())))}"
        except OSError as exc:
            aside = f"could not be moved aside ({statedir.describe(exc)}): left in place"
        self._fault("outbox_corrupt", f"{name} is damaged ({what}); the records read are kept; telemetry of the "
                                      f"unreadable part is lost; {aside}")

    def _meta(self, key: str) -> int:
        found = self._db.read("SELECT value FROM meta WHERE key = ?", (key,))
        return int(found[0][0]) if found else 0

    def _count_disk(self) -> None:
        """At open (a scan, once): the counters every later change keeps."""
        found = self._db.read("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
        if found:
            self.disk_rows, self.disk_bytes = int(found[0][0]), int(found[0][1])
        self._read_head()

    def _read_head(self) -> None:
        """The database's first row, after a change that may have removed it (by the key: no scan)."""
        found = self._db.read("SELECT id, accepted_at, time_trusted FROM outbox ORDER BY id LIMIT 1")
        self._head = (int(found[0][0]), float(found[0][1]), bool(found[0][2])) if found else None
