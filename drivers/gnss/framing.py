"""Framing: a raw serial byte stream in, candidate NMEA sentences out.

Owns no thread; the GNSS reader thread (or ``gnss decode``) calls
:meth:`NmeaFramer.feed` with whatever bytes arrived. Real receivers, cables
and USB bridges deliver NUL bytes, binary noise (wrong baud rate, a u-blox
UBX frame), sentences cut short and two sentences fused into one line. The
framer keeps only what could be a sentence, counts the rest, and never holds
more than ``max_line`` bytes of an unfinished line however hostile the input.

The work is done on whole chunks with ``bytes`` methods and one compiled
regular expression, not byte by byte: on a Pi-class CPU a per-byte Python
loop at 10 Hz costs more than the rest of the decoder together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: NMEA 0183 allows 82 characters; NMEA 4.11 receivers stay well under 100.
DEFAULT_MAX_LINE = 100

_TERMINATOR = re.compile(rb"[\r\n]")


@dataclass(slots=True)
class FramingCounters:
    """What the framer threw away."""

    garbage_bytes: int = 0  # bytes that were not part of a candidate sentence
    fragments: int = 0  # sentence starts cut short (fused, truncated, noisy, overlong)


class NmeaFramer:
    """Splits a byte stream into ``$...`` lines without their terminators."""

    __slots__ = ("_candidate", "_rest", "counters", "max_line")

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._rest = b""
        self.max_line = max_line
        self._candidate = re.compile(rb"\$[\x20-\x7e]{5,%d}" % (max_line - 1))
        self.counters = FramingCounters()

    def feed(self, data: bytes) -> list[str]:
        """Consume ``data``; return the complete candidate lines it finished."""
        pieces = _TERMINATOR.split(self._rest + data)
        rest = pieces.pop()
        out = [line for line in map(self._take, pieces) if line is not None]
        if len(rest) > self.max_line:
            start = rest.rfind(b"$", len(rest) - self.max_line)
            dropped = rest[:start] if start >= 0 else rest
            self._count_dropped(dropped)
            rest = rest[start:] if start >= 0 else b""
        self._rest = rest
        return out

    def flush(self) -> list[str]:
        """End of stream: an unterminated last line is still offered.

        A capture file may end without a final newline; the checksum decides.
        """
        rest, self._rest = self._rest, b""
        line = self._take(rest)
        return [] if line is None else [line]

    def _take(self, piece: bytes) -> str | None:
        if not piece:
            return None
        start = piece.rfind(b"$")
        if start < 0:
            self.counters.garbage_bytes += len(piece)
            return None
        if start:
            self._count_dropped(piece[:start])
        candidate = piece[start:]
        if self._candidate.fullmatch(candidate) is None:
            self._count_dropped(candidate)
            return None
        return candidate.decode("ascii")

    def _count_dropped(self, dropped: bytes) -> None:
        self.counters.garbage_bytes += len(dropped)
        self.counters.fragments += dropped.count(b"$")
