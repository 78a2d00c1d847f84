"""The decoder: raw receiver bytes in, Fixes out, with counters.

Composes framing, sentence validation and epoch assembly. No thread of its
own: the GNSS reader thread owns one instance, ``gnss decode`` another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

from drivers.gnss.epoch import EpochAssembler
from drivers.gnss.fix import Fix
from drivers.gnss.framing import DEFAULT_MAX_LINE, NmeaFramer
from drivers.gnss.sentences import ChecksumMismatch, SentenceError, parse_line


@dataclass(slots=True)
class DecoderCounters:
    sentences: int = 0  # accepted: well-formed with a correct checksum
    checksum_errors: int = 0
    invalid_sentences: int = 0  # no checksum, malformed, absurd values
    garbage_bytes: int = 0
    fragments: int = 0
    epochs: int = 0
    fixes: int = 0  # epochs with a 2D or 3D position

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NmeaDecoder:
    """``feed(bytes) -> [Fix]``; ``flush()`` when the line is quiet or ends."""

    def __init__(self, *, default_day: date | None = None, max_line: int = DEFAULT_MAX_LINE) -> None:
        self._framer = NmeaFramer(max_line=max_line)
        self._epochs = EpochAssembler(default_day=default_day)
        self._counts = DecoderCounters()

    @property
    def counters(self) -> DecoderCounters:
        framing = self._framer.counters
        self._counts.garbage_bytes = framing.garbage_bytes
        self._counts.fragments = framing.fragments
        return self._counts

    @property
    def epoch_pending(self) -> bool:
        return self._epochs.pending

    def feed(self, data: bytes) -> list[Fix]:
        return self._lines(self._framer.feed(data))

    def feed_line(self, line: str) -> list[Fix]:
        """One already-framed line (capture files are read line by line)."""
        return self._lines(self._framer.feed(line.encode("ascii", "replace") + b"\n"))

    def flush(self, *, end_of_stream: bool = False) -> list[Fix]:
        fixes = self._lines(self._framer.flush()) if end_of_stream else []
        fix = self._epochs.flush()
        if fix is not None:
            fixes.append(self._count(fix))
        return fixes

    def _lines(self, lines: list[str]) -> list[Fix]:
        fixes: list[Fix] = []
        counts = self._counts
        for line in lines:
            try:
                obs = parse_line(line)
            except ChecksumMismatch:
                counts.checksum_errors += 1
                continue
            except SentenceError:
                counts.invalid_sentences += 1
                continue
            counts.sentences += 1
            if obs is not None:
                fix = self._epochs.add(obs)
                if fix is not None:
                    fixes.append(self._count(fix))
        return fixes

    def _count(self, fix: Fix) -> Fix:
        self._counts.epochs += 1
        if fix.has_position:
            self._counts.fixes += 1
        return fix
