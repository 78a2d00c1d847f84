"""Alerts and the open emergency's state: a database file of their own, fsynced at every change.

Core thread only; part of the outbox (:class:`agent.outbox.Outbox`).

- An accepted alert is inserted and committed with fsync before
  ``accept`` returns; an emergency's state change made with it (raised,
  acknowledged, cleared) goes in the *same* transaction, so a restart can
  only find the alert and the emergency in agreement.
- Their own file: their fsync flushes only their own small WAL, never the
  telemetry a backlog drain has just written.
- Every alert is also kept in RAM until the broker acknowledged it, so it
  is published whatever the card does. What the card refused (alerts,
  state changes, deletes) stays pending and is written, in one
  transaction, at the next attempt: the first change that succeeds writes
  them all.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from agent.rows import Row
from agent.store import Db
from agent.wal_mark import WalMark

log = logging.getLogger(__name__)

ADDED = (("outbox", "time_trusted", "INTEGER NOT NULL DEFAULT 0"),)  # columns a file of an earlier version lacks

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,          -- boot << 32 | seq
    priority INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,           -- JSON without its closing "historical" flag
    accepted_at REAL NOT NULL,       -- Unix time, as the unit's clock had it
    time_trusted INTEGER NOT NULL DEFAULT 0  -- 1: accepted_at is true UTC (0 for rows of earlier versions)
);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class AlertStore:
    def __init__(self, db: Db) -> None:
        self.db = db
        self.mark = WalMark(db.path)  # what was committed, noted beside the database after each durable commit
        self.rows: dict[int, Row] = {}  # accepted alerts the broker has not acknowledged: all in RAM
        self._unsaved: dict[int, Row] = {}
        self._deletes: set[int] = set()
        self._state: dict[str, str | None] = {}  # changes not yet on disk; None deletes the key

    def stored(self) -> list[tuple[Any, ...]]:
        """The alerts on disk, as read (the outbox checks them before it keeps any)."""
        return self.db.read("SELECT priority, id, topic, payload, accepted_at, time_trusted FROM outbox ORDER BY id")

    @property
    def pending(self) -> bool:
        return bool(self._unsaved or self._deletes or self._state)

    @property
    def unsaved(self) -> int:
        return len(self._unsaved)

    def on_disk(self, row_id: int) -> bool:
        return row_id in self.rows and row_id not in self._unsaved

    def accept(self, row: Row, state: tuple[str, str | None] | None = None) -> bool:
        """Keep the alert (and the state change made with it); True when both are on disk now."""
        self.rows[row.id] = row
        self._unsaved[row.id] = row
        if state is not None:
            self._state[state[0]] = state[1]
        return self.save()

    def put_state(self, key: str, value: str | None) -> bool:
        self._state[key] = value
        return self.save()

    def get_state(self, key: str) -> str | None:
        if key in self._state:
            return self._state[key]
        found = self.db.read("SELECT value FROM state WHERE key = ?", (key,))
        return None if not found else str(found[0][0])

    def rename_state(self, key: str, new_key: str) -> bool:
        """Keep a state value under another key (a saved emergency that does not validate, moved aside)."""
        value = self.get_state(key)
        if value is not None:
            self._state[new_key] = value
        self._state[key] = None
        return self.save()

    def forget(self, row_ids: list[int]) -> None:
        """Rows read back that failed their check: deleted, never published."""
        for row_id in row_ids:
            self.rows.pop(row_id, None)
            self._deletes.add(row_id)
        self.save()

    def ack(self, row_ids: list[int]) -> list[int]:
        """The broker has these: delete them (not fsynced: a lost delete is one duplicate). Returns the alerts."""
        done = []
        for row_id in row_ids:
            if self.rows.pop(row_id, None) is None:
                continue
            done.append(row_id)
            if self._unsaved.pop(row_id, None) is None:
                self._deletes.add(row_id)
        if done:
            self.save()
        return done

    def save(self) -> bool:
        """Write everything pending in one transaction; True when nothing is pending any more."""
        if not self.pending:
            return True
        rows, state, deletes = list(self._unsaved.values()), dict(self._state), list(self._deletes)

        def apply(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO outbox (id, priority, topic, payload, accepted_at, time_trusted) "
                           "VALUES (?,?,?,?,?,?)",
                           ((r.id, r.priority, r.topic, r.payload, r.accepted_at, int(r.trusted)) for r in rows))
            for key, value in state.items():
                if value is None:
                    db.execute("DELETE FROM state WHERE key = ?", (key,))
                else:
                    db.execute("INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", (key, value))
            db.executemany("DELETE FROM outbox WHERE id = ?", ((i,) for i in deletes))

        durable = bool(rows or state)
        if not self.db.write(apply, durable=durable):
            return False
        if durable:
            self.mark.write()
        for row in rows:
            self._unsaved.pop(row.id, None)
        for key, value in state.items():
            if self._state.get(key, object()) == value:
                del self._state[key]
        self._deletes.difference_update(deletes)
        return not self.pending
