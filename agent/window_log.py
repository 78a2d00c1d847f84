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
Reading stops at the first record that is short or fails its CRC: the tail a power cut tore.
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


class WindowLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = 0
        self.unsynced = False
        self.torn = 0  # records dropped at start: a tail torn by a power cut, or damage

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
        rows, offset = [], 0
        while offset + HEAD.size <= len(data):
            length, crc = HEAD.unpack_from(data, offset)
            body = data[offset + HEAD.size:offset + HEAD.size + length]
            if length > MAX_RECORD or len(body) < length or zlib.crc32(body) != crc or length < BODY.size:
                break
            row_id, flags, accepted_at, topic_len = BODY.unpack_from(body)
            topic = body[BODY.size:BODY.size + topic_len]
            try:
                rows.append(Row(flags & ~TRUSTED, row_id, topic.decode(), unpack(body[BODY.size + topic_len:]),
                                accepted_at, bool(flags & TRUSTED)))
            except ValueError:
                break
            offset += HEAD.size + length
        self.torn = 1 if offset < len(data) else 0
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

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
