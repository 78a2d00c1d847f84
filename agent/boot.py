"""(boot, seq): the name of every message the vehicle produces, so that dispatch can audit loss.

Core thread only (the outbox owns the :class:`Sequence`).

- The boot number goes up by one at every start and is on disk (fsynced)
  before the first message of the start is named. It lives in
  ``<outbox>.boot``: two 32-byte slots, each ``magic, boot, crc32``. A start
  reads both, takes the larger valid number, and writes the next one *over
  the older slot, in place* (``pwrite`` + ``fsync``): no temporary file,
  no new block (so it works on a full card), and a write torn by a power
  cut leaves the other slot good.
- ``seq`` counts the messages of one boot from 1, without a gap: every
  message that enters the outbox takes the next one (messages that are not
  stored, the retained status and the last will, take none). A gap that
  dispatch sees in (vehicle, boot, seq) is therefore exactly a message that
  was produced and never made durable.
- An outbox row's id is ``boot << 32 | seq``: one integer that sorts by
  boot, then seq, and keeps the numbers a message was born with.
- A start on a card that refuses the write (read-only, failing) cannot
  promise the next start a larger number; it takes one far ahead instead
  (stored + 2^20 to 2^21, at random), so that it cannot meet the numbers of
  the starts that follow, and writes it as soon as the card allows.
"""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from pathlib import Path

from agent import statedir

SEQ_BITS = 32
SLOT = struct.Struct("<8sQI12x")  # magic, boot, crc32 of magic+boot; 32 bytes
MAGIC = b"PABOOT01"
JUMP = 1 << 20
MAX_BOOT = (1 << 31) - 1


def row_id(boot: int, seq: int) -> int:
    return boot << SEQ_BITS | seq


def split(row: int) -> tuple[int, int]:
    """(boot, seq) of an outbox row id."""
    return row >> SEQ_BITS, row & ((1 << SEQ_BITS) - 1)


def _slot(boot: int) -> bytes:
    head = MAGIC + boot.to_bytes(8, "little")
    return SLOT.pack(MAGIC, boot, zlib.crc32(head))


def _read(data: bytes) -> list[int]:
    found = []
    for offset in (0, SLOT.size):
        chunk = data[offset:offset + SLOT.size]
        if len(chunk) < SLOT.size:
            continue
        magic, boot, crc = SLOT.unpack(chunk)
        if magic == MAGIC and crc == zlib.crc32(magic + boot.to_bytes(8, "little")):
            found.append(boot)
    return found


class BootRecord:
    """The boot number's file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.boot = 0
        self.durable = False
        self.error: OSError | None = None  # why this start's number is not on disk yet

    def stored(self) -> int:
        try:
            fd = statedir.open_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            return max(_read(os.pread(fd, 2 * SLOT.size, 0)), default=0)
        finally:
            os.close(fd)

    def next(self, floor: int = 0) -> int:
        """This start's boot number: one more than any seen before; raises nothing."""
        try:
            stored = self.stored()
        except OSError:
            stored = 0
        self.boot = max(stored, floor) + 1
        try:
            self._write()
        except OSError as exc:
            self.error = exc
            self.boot = min(MAX_BOOT, self.boot + JUMP + secrets.randbelow(JUMP))
            self.durable = False
        return self.boot

    def persist(self) -> None:
        """Write this start's number if it is not on disk yet (after a refused write); raises OSError."""
        if not self.durable:
            self._write()

    def probe(self) -> None:
        """Does the card take a write again? This start's number rewritten in place (no new block, so a
        full card passes and a read-only or failing one does not); raises OSError."""
        self._write()

    def _write(self) -> None:
        fd = statedir.open_file(self.path, os.O_RDWR | os.O_CREAT)
        try:
            data = os.pread(fd, 2 * SLOT.size, 0)
            slots = [_read(data[i:i + SLOT.size]) for i in (0, SLOT.size)]
            older = 0 if not slots[0] or (slots[1] and slots[0][0] <= slots[1][0]) else 1
            if len(data) < 2 * SLOT.size:  # a new file: both slots at once (one block, allocated now)
                os.pwrite(fd, _slot(self.boot) + _slot(0), 0)
            else:
                os.pwrite(fd, _slot(self.boot), older * SLOT.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.durable = True
        self.error = None


class Sequence:
    """This boot's number and the next ``seq``; :meth:`take` names one message."""

    def __init__(self, boot: int = 1) -> None:
        self.boot = boot
        self._next = 1

    def peek(self) -> int:
        return self._next

    def take(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    @property
    def last(self) -> int:
        return self._next - 1

    def row_id(self, seq: int) -> int:
        return row_id(self.boot, seq)
