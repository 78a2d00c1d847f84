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
- Boot numbers only increase; they may jump. When the record cannot be
  trusted to hold the last number used, the start takes a number from the
  wall clock instead (:func:`choose`): the seconds elapsed since
  ``drivers.gnss.fix.TIME_FLOOR`` (this build's date), at least one more
  than any boot found in the outbox's databases. Every start after counts
  up by one from there. A unit starts less than once a second, so a number
  taken from the clock is larger than every number it used before, even on
  another card. Seconds since the floor, not Unix time: a row id is
  ``boot << 32 | seq`` in SQLite's signed 64 bits, so a boot stays below
  2^31 (68 years of seconds). The cases:

  - the record read (both slots valid): the larger one + 1;
  - one slot valid, the other not (a power cut while a start wrote it, or
    damage to the newest): the valid one + 2, covering both (no fault);
  - the record lost (missing while the outbox's files are there, empty,
    truncated, no valid slot, unreadable): the clock's number, at least one
    more than the last boot the alerts database noted (every start notes
    its number there too), and the fault ``boot_record_lost``;
  - a state dir with none of the outbox's files (a new unit, a wiped or
    replaced card): the clock's number, no fault (nothing says it is not a
    new unit);
  - the record cannot be written (read-only or failing card): the clock's
    number (successive starts still increase), written as soon as the card
    allows.

  With the clock before the floor (a Pi without RTC before NTP) such a
  start jumps to the highest number known + 2^20 to 2^21, at random. When
  the databases know no number either (a wiped card, no clock), nothing
  bounds the numbers used before: the fault's detail says so (reuse is
  unlikely, not impossible).
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from agent import statedir
from drivers.gnss.fix import TIME_FLOOR

log = logging.getLogger(__name__)

SEQ_BITS = 32
SLOT = struct.Struct("<8sQI12x")  # magic, boot, crc32 of magic+boot; 32 bytes
MAGIC = b"PABOOT01"
JUMP = 1 << 20
MAX_BOOT = (1 << 31) - 1
CEILING = MAX_BOOT - 4 * JUMP  # a number from the clock stays below; a row beyond cannot be ours
FLOOR_S = int(datetime(TIME_FLOOR.year, TIME_FLOOR.month, TIME_FLOOR.day, tzinfo=UTC).timestamp())


def from_clock(wall: float) -> int | None:
    """The seconds elapsed since the build floor by ``wall``; None for a clock before it."""
    elapsed = int(wall) - FLOOR_S
    return min(elapsed, CEILING - 1) if elapsed >= 1 else None


def choose(base: int, clock: int | None) -> int:
    """The number of a start whose record cannot promise ``base`` is unused: ``base`` or the clock's,
    whichever is larger; with no clock, a random jump ahead (see the module docstring)."""
    if clock is not None:
        return max(base, clock)
    return min(MAX_BOOT, base + JUMP + secrets.randbelow(JUMP))


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

    def __init__(self, path: Path, *, wall: Callable[[], float] = time.time) -> None:
        self.path = path
        self._wall = wall
        self.boot = 0
        self.durable = False
        self.error: OSError | None = None  # why this start's number is not on disk yet
        self.lost: str | None = None  # why the record could not be trusted (the fault's detail), else None

    def stored(self) -> int:
        """The larger valid number on disk (0: none); raises OSError."""
        try:
            fd = statedir.open_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            return max(_read(os.pread(fd, 2 * SLOT.size, 0)), default=0)
        finally:
            os.close(fd)

    def _inspect(self) -> tuple[int, str | None, bool]:
        """(the number the record promises is used, why it cannot be trusted or None, the file is missing)."""
        try:
            fd = statedir.open_file(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0, "missing", True
        except OSError as exc:
            return 0, f"unreadable ({statedir.describe(exc)})", False
        try:
            data = os.pread(fd, 2 * SLOT.size + 1, 0)
        except OSError as exc:
            return 0, f"unreadable ({statedir.describe(exc)})", False
        finally:
            os.close(fd)
        found = _read(data)
        if len(data) != 2 * SLOT.size:
            size = "empty" if not data else f"{len(data)} bytes long, not {2 * SLOT.size}"
            return max(found, default=0) + 1, size, False
        if not found:
            return 0, "damaged: no valid slot", False
        if len(found) == 1:  # a start's write torn, or the newest slot damaged: one more covers both
            log.warning("%s: one slot is not valid (a write torn by a power cut, or damage): one boot skipped",
                        self.path.name)
            return found[0] + 1, None, False
        return max(found), None, False

    def next(self, floor: int = 0, *, first: bool = False) -> int:
        """This start's boot number: one more than any used before, or the clock's (see the module
        docstring); ``floor``: the highest boot found in the outbox's databases; ``first``: none of the
        outbox's files exist. Raises nothing: :attr:`error`, :attr:`lost` say what went wrong."""
        stored, problem, missing = self._inspect()
        base = max(stored, floor) + 1
        clock = from_clock(self._wall())
        if problem is not None and not (missing and first):
            unsure = "" if clock is not None or floor else (
                "; the clock is before this build's date, so the numbers used before are unknown: jumped "
                "ahead at random, a number given twice is unlikely but not excluded")
            self.boot = choose(base, clock)
            how = f" (seconds since {TIME_FLOOR.isoformat()})" if self.boot == clock else ""
            self.lost = (f"{self.path.name} {problem}; highest boot in the outbox: {floor}; this start takes "
                         f"boot {self.boot}{how}{unsure}")
        elif problem is not None:  # a new unit, or a wiped or replaced card: the clock, in case it is the latter
            self.boot = choose(base, clock)
            log.info("%s: no state files yet (a new unit or card): boot %d", self.path.name, self.boot)
        else:
            self.boot = base
        try:
            self._write()
        except OSError as exc:
            self.error = exc
            self.durable = False
            if problem is None:  # the next start reads the same record: the clock keeps the order
                self.boot = choose(base, clock)
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
            if len(data) < 2 * SLOT.size or not any(slots):  # new or lost: both slots at once (one block)
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
