"""The outbox: every accepted message stays here until the broker has acknowledged it.

Owned and used by the core thread (the checkpoint thread only runs
:meth:`Outbox.run_checkpoints`). In Telegraf's terms a transaction: the
core *accepts* a message, the forwarder *leases* rows to publish, and each
row is either *acked* (PUBACK: deleted) or *released* (the link dropped:
offered again), in (priority, id) order; an id is ``boot << 32 | seq``
(:mod:`agent.boot`), so a row keeps the numbers it was born with.

Where a message is, and what each kind of failure loses:

- an alert: in RAM until acknowledged, and committed with fsync, with the
  emergency's state change made with it, before ``accept`` returns
  (:mod:`agent.alert_store`);
- telemetry, first in RAM for at most the commit window
  (``outbox.commit_window_ms``): online it is usually acknowledged by then
  and never touches the card. What is still there is appended to the window
  log (:mod:`agent.window_log`, no fsync: a kill -9 loses at most one
  window), fsynced at most ``outbox.sync_window_s`` apart (a power cut
  loses at most that), and moved into the database in one transaction
  every ``BATCH_S`` or ``BATCH_ROWS`` (small pages, a rollback journal).
  Offline at one position a second the card takes 2.7-2.8 MB an hour
  where one commit per window took 34 (``benchmarks/disk_writes.py``);
- a storage error (full, read-only, failing card) is a fault, never an
  exception: alerts stay in RAM and are published, telemetry stays in RAM
  up to ``outbox.ram_ring`` messages (beyond, the oldest is dropped and
  counted), everything is written again, every ``RETRY_S``, as soon as the
  card takes it, and the fault is cleared.

Bounds: ``max_messages``, ``max_bytes`` and ``max_age_h``. When over, the
oldest telemetry is evicted, never an alert, and counted (persistently):
exactly the excess, in the same transaction as the batch that brings it
(its cutoff found by the key). ``max_age_h`` removes only rows whose age is
known, never on a step of the wall clock (see :mod:`agent.outbox_store`,
Time); every timer runs on the monotonic clock. The figures a health
message, a ``status`` poll or an eviction needs (depth, rows and bytes on
disk, the oldest row, what RAM holds) are counters kept as rows come and
go, counted once at start.
Rows read back from disk are checked (:class:`agent.rows.RowCheck`): one
this vehicle could not have produced is dropped and reported
(``outbox_rejected``), never published. Acknowledged rows are deleted with
``secure_delete``; the telemetry database's journal is emptied at each
commit, the alerts' WAL at each checkpoint (it stays under 64 KiB).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from agent.clock import Clock
from agent.config import OutboxConfig
from agent.messages import Priority
from agent.outbox_store import BATCH_ROWS, BATCH_S, PAGE, RETRY_S, ROW_COLUMNS, OutboxStore
from agent.rows import Row, RowCheck, unpack

__all__ = ["BATCH_ROWS", "BATCH_S", "RETRY_S", "Outbox", "Row"]

log = logging.getLogger(__name__)


class Outbox(OutboxStore):
    """A durable, bounded, prioritised queue of messages awaiting PUBACK."""

    def __init__(self, path: Path, cfg: OutboxConfig, *, clock: Clock | Callable[[], float] | None = None,
                 on_fault: Callable[[str, str], None] | None = None, on_clear: Callable[[str], None] | None = None,
                 check: RowCheck | None = None) -> None:
        self._ready: list[Row] = []  # heap: RAM rows and disk rows read ahead, not leased
        self._in_ready: set[int] = set()
        self._gone: set[int] = set()  # acknowledged while still in the heap (leased by newest())
        self._cursor: tuple[int, int] = (-1, -1)  # the last (priority, id) read ahead from disk
        self._disk_done = False  # every disk row up to now has been read ahead
        super().__init__(path, cfg, clock=clock, on_fault=on_fault, on_clear=on_clear, check=check)

    @property
    def _read_ahead_size(self) -> int:
        return len(self._ready)

    def accept(self, seq: int, priority: int, topic: str, payload: bytes, *,
               state: tuple[str, str | None] | None = None) -> int:
        """Take message ``seq`` of this boot; returns its row id. An alert (and ``state``, an emergency's
        change made with it) is on disk, fsynced, when this returns, unless the card refused it."""
        accepted_at, trusted = self._time.stamp()
        row = Row(priority, self.seq.row_id(seq), topic, payload, accepted_at, trusted)
        mono = self._time.monotonic()
        self._mark(seq, mono)
        self._offer(row)
        if priority == Priority.ALERT:
            self.alerts.accept(row, state)
            return row.id
        if state is not None:
            self.alerts.put_state(*state)
        if self._ram_since is None:
            self._ram_since = mono
        self._ram[row.id] = row
        if len(self._ram) > self._cfg.ram_ring:  # a burst: to the card before its window ends, if it takes it
            self._to_log()
            if len(self._ram) > self._cfg.ram_ring:
                self._drop_oldest()
        return row.id

    def _drop_oldest(self) -> None:
        """The card refuses writes and the RAM ring is full: the oldest telemetry goes, counted."""
        drop = sorted(self._ram)[:max(len(self._ram) - self._cfg.ram_ring, self._cfg.ram_ring // 20)]
        for row_id in drop:
            del self._ram[row_id]
            self._leased.pop(row_id, None)
            self._unheld(row_id)
        self.dropped += len(drop)
        gone = set(drop)
        self._ready = [r for r in self._ready if r.id not in gone]
        heapq.heapify(self._ready)
        self._in_ready -= gone
        log.warning("RAM ring full while the card refuses writes: dropped the %d oldest telemetry messages "
                    "(%d in all)", len(drop), self.dropped)

    def put_state(self, key: str, value: str) -> None:
        """Small durable state (the open emergency...), fsynced, beside the alerts."""
        self.alerts.put_state(key, value)

    def get_state(self, key: str) -> str | None:
        return self.alerts.get_state(key)

    def delete_state(self, key: str) -> None:
        self.alerts.put_state(key, None)

    def move_state_aside(self, key: str) -> str:
        """Keep a state value that does not validate under ``<key>.rejected-<time>``; returns that key."""
        aside = f"{key}.rejected-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(self._clock()))}"
        self.alerts.rename_state(key, aside)
        return aside

    def lease(self, limit: int, *, max_priority: int | None = None) -> list[Row]:
        """Up to ``limit`` rows not in flight, in (priority, id) order."""
        out: list[Row] = []
        while len(out) < limit:
            # disk rows after the cursor sort after it: read ahead until the heap's top is safe
            if not self._disk_done and self._db.is_open and (not self._ready or self._ready[0].key > self._cursor):
                self._read_ahead()
                continue
            if not self._ready:
                break
            row = self._ready[0]
            if max_priority is not None and row.priority > max_priority:
                break
            heapq.heappop(self._ready)
            self._in_ready.discard(row.id)
            if row.id in self._gone:
                self._gone.discard(row.id)
                continue
            if row.id in self._leased or row.id in self._deletes:
                continue
            self._leased[row.id] = row
            out.append(row)
        return out

    def newest(self, priority: int) -> Row | None:
        """The most recent row of ``priority`` not in flight (the freshest position)."""
        candidates = [r for r in (*self._ram.values(), *self._logged.values())
                      if r.priority == priority and r.id not in self._leased]
        if candidates:
            row = max(candidates, key=lambda r: r.id)
        else:
            found = self._from_disk(self._db.read(f"SELECT {ROW_COLUMNS} FROM outbox "  # noqa: S608
                                                  "WHERE priority = ? ORDER BY id DESC LIMIT 1", (priority,)))
            if not found or found[0].id in self._leased or found[0].id in self._deletes:
                return None
            row = found[0]
        self._leased[row.id] = row
        return row

    def ack(self, ids: Iterable[int]) -> None:
        alerts = []
        for row_id in ids:
            self._leased.pop(row_id, None)
            if row_id in self._evicted_in_flight:  # evicted while it was out: nothing left to delete
                self._evicted_in_flight.discard(row_id)
                continue
            if row_id in self._in_ready:
                self._gone.add(row_id)  # leased by newest(): its heap entry must not go out again
            if row_id in self.alerts.rows:
                alerts.append(row_id)
            elif self._ram.pop(row_id, None) is not None:
                self._unheld(row_id)
            elif self._logged.pop(row_id, None) is None and row_id not in self._deletes:
                self._deletes.add(row_id)
        if not self._ram:
            self._ram_since = None
        if not self._logged and self._logged_since is not None:
            self._logged_since = None
            with contextlib.suppress(OSError):
                self._log.clear()  # everything it held was acknowledged
        if alerts:
            self.alerts.ack(alerts)

    def release(self, ids: Iterable[int]) -> None:
        """The link dropped before these were acknowledged: offer them again."""
        for row_id in ids:
            row = self._leased.pop(row_id, None)
            if row is not None:
                self._offer(row)

    def release_all(self) -> None:
        self.release(list(self._leased))
        self._evicted_in_flight.clear()  # their acknowledgements can no longer come

    def _from_disk(self, found: Iterable[tuple[Any, ...]], *, alerts: bool = False) -> list[Row]:
        """Rows read back, decoded and checked; the others dropped from the database and reported."""
        rows, bad, why = [], [], ""
        for priority, row_id, topic, blob, accepted_at, trusted in found:
            if not alerts and row_id in self._deletes:
                continue  # dropped already (acknowledged, or rejected by an earlier read)
            try:
                row = Row(int(priority), int(row_id), str(topic), unpack(bytes(blob)), float(accepted_at),
                          bool(trusted))
                problem = self._check.problem(row) if self._check is not None else None
            except (ValueError, TypeError) as exc:
                problem = f"payload {exc}"
            if problem is None:
                rows.append(row)
            else:
                bad.append(int(row_id))
                why = problem
        if bad:
            self.rejected += len(bad)
            if alerts:
                self.alerts.forget(bad)
            else:
                self._deletes.update(bad)
            self._fault("outbox_rejected", f"{self.rejected} stored messages dropped, not published: "
                                           f"not this vehicle's (the last: {why})")
        return rows

    def _offer(self, row: Row) -> None:
        if row.id not in self._in_ready:
            heapq.heappush(self._ready, row)
            self._in_ready.add(row.id)
        self._gone.discard(row.id)

    def _read_ahead(self) -> None:
        """Read the next page of disk rows after the cursor."""
        found = self._db.read(f"SELECT {ROW_COLUMNS} FROM outbox "  # noqa: S608
                              "WHERE (priority, id) > (?, ?) ORDER BY priority, id LIMIT ?", (*self._cursor, PAGE))
        if len(found) < PAGE:
            self._disk_done = True
        if not found:
            return
        self._cursor = (int(found[-1][0]), int(found[-1][1]))
        for row in self._from_disk(found):
            if row.id not in self._leased and row.id not in self._deletes:
                self._offer(row)

    def _forget_read_ahead(self) -> None:
        """Disk changed under the read-ahead: keep RAM rows and alerts, re-read the disk from the start."""
        keep = (*self._ram.values(), *self._logged.values(), *self.alerts.rows.values())
        self._ready = [r for r in keep if r.id not in self._leased]
        heapq.heapify(self._ready)
        self._in_ready = {r.id for r in self._ready}
        self._gone.clear()
        self._cursor = (-1, -1)
        self._disk_done = False

    @property
    def depth(self) -> int:
        return (self.disk_rows - len(self._deletes) + len(self._ram) + len(self._logged)
                + len(self.alerts.rows))

    @property
    def alerts_waiting(self) -> int:
        """Alerts accepted and not yet acknowledged by the broker."""
        return len(self.alerts.rows)

    @property
    def in_flight(self) -> int:
        return len(self._leased)

    @property
    def next_id(self) -> int:
        """The row id the next accepted message will have: every row accepted before has a smaller one."""
        return self.seq.row_id(self.seq.peek())

    def oldest_age_s(self) -> float | None:
        """How old the oldest waiting message is known to be at least (see :mod:`agent.outbox_store`, Time);
        in constant time: the first of RAM, of the window log and of the database are kept, alerts are few."""
        if self.depth == 0:  # the database's first row may be acknowledged, its delete not yet committed
            return None
        heads: list[tuple[int, float, bool]] = []
        for rows in (self._ram, self._logged):  # both in id order: accepted (or logged) oldest first
            if rows:
                row = rows[next(iter(rows))]
                heads.append((row.id, row.accepted_at, row.trusted))
        if self.alerts.rows:
            row = self.alerts.rows[min(self.alerts.rows)]
            heads.append((row.id, row.accepted_at, row.trusted))
        if self._head is not None:
            heads.append(self._head)
        return None if not heads else round(self._age_of(*min(heads)), 3)

    def stats(self) -> dict[str, float | int | None]:
        return {
            "depth": self.depth,
            "on_disk": self.disk_rows,
            "bytes": self.disk_bytes,
            "oldest_age_s": self.oldest_age_s(),
            "evictions": self.evictions,
            "alerts": len(self.alerts.rows),
            "in_flight": len(self._leased),
            "commits": self.commits,
            "boot": self.seq.boot,
            "seq": self.seq.last,
            "held_in_ram": self._held,
            "alerts_unsaved": self.alerts.unsaved,
            "dropped": self.dropped,
            "rejected": self.rejected,
        }

