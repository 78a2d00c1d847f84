"""The window log: telemetry that outlived its commit window, appended to a file as it is.

Core thread only. A SQLite commit rewrites at least a whole page of its
WAL, so one commit a second, for one ~400-byte position a second, costs
tens of MB an hour on the card. Instead, at the end of each commit window
the telemetry not yet acknowledged is appended here (packed, ~90 bytes a
position) with one ``write`` and no fsync: from then on a kill -9 cannot
lose it (the kernel has it). The file is fsynced at most
``outbox.sync_window_s`` apart (a power cut loses at most that), and its
rows move into the database in one transaction every few minutes, after
which it is emptied. At start, what it holds is read back into the
database (rows already there are ignored: their ids are unique).

Record: ``<length u32><crc32 u32>`` then ``<id i64><priority u8><accepted_at f64><topic length u16>``,
the topic, and the packed payload. The priority byte's high bit (``TRUSTED``) says that ``accepted_at``
is true UTC; a record without it (or written by a version before the bit) is read as untrusted.
A record that is short or fails its CRC at the end of the file (zeros, or a record cut short) is
the tail a power cut tore: dropped, normal. Anywhere else it is damage: reading goes on at the next
record that reads whole, and :attr:`WindowLog.damaged` says what was skipped (the outbox moves the
file aside and reports it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from pathlib import Path

from agent import statedir
from agent.rows import Row, pack, unpack

HEAD = struct.Struct("<II")
BODY = struct.Struct("<qBdH")
MAX_RECORD = 1 << 20
TRUSTED = 0x80


def encode(row: Row) -> bytes:
    topic = row.topic.encode()
    flags = row.priority | (TRUSTED if row.trusted else 0)
    body = BODY.pack(row.id, flags, row.accepted_at, len(topic)) + topic + pack(row.payload)
    return HEAD.pack(len(body), zlib.crc32(body)) + body


def _record(data: bytes, offset: int) -> tuple[Row, int] | None:
    """The record at ``offset`` and where the next one begins; None if it does not read whole."""
    if offset + HEAD.size > len(data):
        return None
    length, crc = HEAD.unpack_from(data, offset)
    body = data[offset + HEAD.size:offset + HEAD.size + length]
    if length > MAX_RECORD or len(body) < length or length < BODY.size or zlib.crc32(body) != crc:
        return None
    row_id, flags, accepted_at, topic_len = BODY.unpack_from(body)
    topic = body[BODY.size:BODY.size + topic_len]
    try:
        row = Row(flags & ~TRUSTED, row_id, topic.decode(), unpack(body[BODY.size + topic_len:]), accepted_at,
                  bool(flags & TRUSTED))
    except ValueError:
        return None
    return row, offset + HEAD.size + length


def _torn_tail(data: bytes, offset: int) -> bool:
    """What a power cut leaves at the end: zeros (the size written, not the blocks), or one last record
    cut short or not all written (nothing but zeros after where it would end)."""
    rest = data[offset:]
    if not rest.strip(b"\0") or len(rest) < HEAD.size:
        return True
    length = HEAD.unpack_from(rest)[0]
    return BODY.size <= length <= MAX_RECORD and not rest[HEAD.size + length:].strip(b"\0")


class WindowLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0
        self.unsynced = False
        self.torn = 0  # 1: a record at the end was torn by a power cut (dropped; normal)
        self.damaged: str | None = None  # where records in the middle could not be read (damage, not a power cut)

    def read(self) -> list[Row]:
        """The rows the file holds (at start, before anything is appended)."""
        try:
            fd = statedir.open_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            data = b""
            while chunk := os.read(fd, 1 << 20):
                data += chunk
        finally:
            os.close(fd)
        rows, offset, skipped = [], 0, 0
        while offset < len(data):
            record = _record(data, offset)
            if record is not None:
                rows.append(record[0])
                offset = record[1]
                continue
            if _torn_tail(data, offset):
                self.torn = 1
                break
            found = next((at for at in range(offset + 1, len(data) - HEAD.size + 1)
                          if _record(data, at) is not None), len(data))  # the next record that reads whole
            skipped += found - offset
            if self.damaged is None:
                self.damaged = f"unreadable from byte {offset} of {len(data)}"
            offset = found
        if self.damaged is not None:
            self.damaged += f": {skipped} bytes skipped, {len(rows)} records read"
        return rows

    def append(self, rows: list[Row]) -> None:
        """One write of all ``rows``; OSError (and nothing half-written) when the card refuses it."""
        data = b"".join(encode(row) for row in rows)
        fd = self._open()
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self.size)  # no torn record left behind
            raise
        self.size += len(data)
        self.unsynced = True

    def sync(self) -> None:
        if self._fd is not None and self.unsynced:
            os.fsync(self._fd)
            self.unsynced = False

    def clear(self) -> None:
        """Everything it held is in the database now (or acknowledged): empty it."""
        if self._fd is None and not self.path.exists():
            return
        fd = self._open()
        os.ftruncate(fd, 0)
        self.size = 0
        self.unsynced = False

    def _open(self) -> int:
        if self._fd is None:
            self._fd = statedir.open_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self.size = os.fstat(self._fd).st_size
        return self._fd

    def move_aside(self, stamp: str) -> str:
        """Keep the file as it is for a technician (``<name>.corrupt-<stamp>``); returns the new name."""
        self.close()
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        os.replace(self.path, aside)
        self.size = 0
        return aside.name

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
