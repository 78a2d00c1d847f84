"""What the alerts database had committed, noted beside it, so that a start notices when it lost it.

Core thread only (the :class:`agent.alert_store.AlertStore` writes it, the
outbox's opening reads it). SQLite cannot tell: a WAL cut short, or with a
damaged frame, is read up to the last good commit before it, and an emptied
database file opens as a new one. Both lose an open emergency silently.

``<alerts db>.mark`` is one 32-byte record (``magic, WAL salts, mxFrame,
boot, crc32``), rewritten in place (``pwrite``, no new block) after every
*durable* commit of the alerts database, once that commit is fsynced:

- the WAL's salts and its last committed frame (read from the WAL index,
  ``-shm``, where SQLite keeps them): a start whose WAL still has these
  salts must read a valid checksum chain up to that frame, and find it a
  commit. A frame missing or damaged below it is committed data lost.
- the boot number the database noted (``state`` key ``boot``): a start that
  finds no note, or an older one, found a database that lost what it had.

The record is written *after* the commit: a kill or power cut in between
leaves it behind the database, never ahead, so a torn WAL tail (frames of a
transaction that never committed) is never taken for damage. Non-durable
commits (acknowledged alerts' deletes) do not write it: they may be lost by
a power cut, and must not be claimed. A WAL restarted since (new salts, after
a complete checkpoint) or gone (a clean stop deletes it) is not checked: its
frames are in the database file. A record missing or damaged checks nothing
(an earlier version, a new unit). Cost at start: the record read and the
WAL's committed frames checksummed, at most a few hundred KB (the checkpoint
thread keeps the WAL short).
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

from agent import statedir

log = logging.getLogger(__name__)

RECORD = struct.Struct("<8s8sIQI")  # magic, WAL salts (raw), mxFrame, boot, crc32 of the rest; 32 bytes
MAGIC = b"PAWALMK1"
WAL_MAGIC = (0x377F0682, 0x377F0683)  # little-endian, big-endian checksums
WAL_HEADER = 32
FRAME_HEADER = 24
SHM_HEADER = struct.Struct("=IIIBBHII8s8s8s")  # SQLite's WalIndexHdr, native byte order
_M = 0xFFFFFFFF


def _checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & _M
        s1 = (s1 + words[i + 1] + s0) & _M
    return s0, s1


def wal_problem(wal: bytes, salts: bytes, mx_frame: int) -> str | None:
    """Why the WAL no longer holds the ``mx_frame`` committed frames noted with ``salts``; None when it does,
    or when it is another WAL (restarted since: its header's salts differ) or none."""
    if mx_frame <= 0 or len(wal) < WAL_HEADER:
        return None
    magic, _version, page, _seq = struct.unpack(">IIII", wal[:16])
    if magic not in WAL_MAGIC or wal[16:24] != salts:
        return None
    big = bool(magic & 1)
    s0, s1 = _checksum(wal[:24], 0, 0, big)
    if (s0, s1) != struct.unpack(">II", wal[24:32]):
        return None
    size = FRAME_HEADER + page
    for frame in range(1, mx_frame + 1):
        at = WAL_HEADER + (frame - 1) * size
        chunk = wal[at:at + size]
        if len(chunk) < size:
            return f"its WAL ends at frame {frame - 1} of the {mx_frame} committed"
        _pgno, commit = struct.unpack(">II", chunk[:8])
        s0, s1 = _checksum(chunk[FRAME_HEADER:], *_checksum(chunk[:8], s0, s1, big), big)
        if chunk[8:16] != salts or (s0, s1) != struct.unpack(">II", chunk[16:24]):
            return f"its WAL is damaged at frame {frame} of the {mx_frame} committed"
        if frame == mx_frame and not commit:
            return f"its WAL's frame {frame} was noted as a commit and is not one"
    return None


class WalMark:
    """The alerts database's committed state, noted beside it (see the module docstring)."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".mark")
        self.boot = 0  # the boot number the database has noted (written by the start, then unchanged)
        # The WAL index is opened once and kept open while SQLite uses the database: closing any descriptor
        # of a file drops every POSIX lock this process holds on it, SQLite's included; another process
        # (a technician's sqlite3) would then take the index for unused and reset it under our mapping (SIGBUS).
        self._shm_fd: int | None = None

    def close(self) -> None:
        """After the database's connections are closed."""
        if self._shm_fd is not None:
            fd, self._shm_fd = self._shm_fd, None
            os.close(fd)

    def read(self) -> tuple[bytes, int, int] | None:
        """(WAL salts, last committed frame, boot noted) as last written; None: none, or not valid."""
        try:
            fd = statedir.open_file(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            data = os.pread(fd, RECORD.size, 0)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) != RECORD.size:
            return None
        magic, salts, mx_frame, boot, crc = RECORD.unpack(data)
        if magic != MAGIC or crc != zlib.crc32(data[:-4]):
            return None
        return salts, mx_frame, boot

    def write(self) -> None:
        """After a durable commit: the WAL index's salts and last frame, and :attr:`boot`. Never raises: a
        record not written checks less at the next start, it loses nothing."""
        try:
            salts, mx_frame = self._wal_index()
            head = struct.pack("<8s8sIQ", MAGIC, salts, mx_frame, self.boot)
            fd = statedir.open_file(self.path, os.O_RDWR | os.O_CREAT)
            try:
                os.pwrite(fd, head + struct.pack("<I", zlib.crc32(head)), 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.debug("%s not written: %s", self.path.name, statedir.describe(exc))

    def _wal_index(self) -> tuple[bytes, int]:
        if self._shm_fd is None:
            self._shm_fd = statedir.open_file(Path(f"{self.db_path}-shm"), os.O_RDONLY)
        data = os.pread(self._shm_fd, SHM_HEADER.size, 0)
        if len(data) < SHM_HEADER.size:
            return bytes(8), 0
        fields = SHM_HEADER.unpack(data)
        return fields[9], fields[6]

    def wal_problem(self, noted: tuple[bytes, int, int]) -> str | None:
        """Before the database is opened: has its WAL lost committed frames? Raises nothing."""
        salts, mx_frame, _boot = noted
        wal = Path(f"{self.db_path}-wal")
        try:
            fd = statedir.open_file(wal, os.O_RDONLY)
        except OSError:
            return None
        try:
            page = struct.unpack(">I", os.pread(fd, 12, 0)[8:12] or bytes(4))[0]
            data = os.pread(fd, WAL_HEADER + mx_frame * (FRAME_HEADER + page), 0)
        except (OSError, struct.error):
            return None
        finally:
            os.close(fd)
        return wal_problem(data, salts, mx_frame)

    def keep_copy(self, stamp: str) -> str:
        """The database and its companions copied (not moved: SQLite goes on with what it can read) to
        ``<name>.damaged-<stamp>*`` for a technician; the copy's name, or why there is none."""
        aside = self.db_path.with_name(f"{self.db_path.name}.damaged-{stamp}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = Path(f"{self.db_path}{suffix}")
                try:
                    fd = statedir.open_file(source, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    out = statedir.open_file(Path(f"{aside}{suffix}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                    try:
                        while chunk := os.read(fd, 1 << 16):
                            os.write(out, chunk)
                        os.fsync(out)
                    finally:
                        os.close(out)
                finally:
                    os.close(fd)
        except OSError as exc:
            return f"could not be copied aside ({statedir.describe(exc)})"
        return f"a copy of what was found kept as {aside.name}"
