"""The decoder: raw receiver bytes in, Fixes out, with counters.

Composes framing, sentence validation and epoch assembly. No thread of its
own: the GNSS reader thread owns one instance, ``gnss decode`` another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    late: int = 0  # sentences of an epoch already emitted, dropped
    held_dropped: int = 0  # sentences dropped from the bounded buffer (no time yet, or a time that never moves)
    cycle_violations: int = 0  # times a learnt end of cycle proved wrong
    split_epochs: int = 0  # sentences that came after a quiet line had closed their epoch
    ended_by_time: int = 0  # epochs ended by the next epoch's time
    ended_by_ender: int = 0  # ... by the learnt last sentence of the cycle
    ended_by_quiet: int = 0  # ... by a quiet line (or the end of the stream)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NmeaDecoder:
    """``feed(bytes) -> [Fix]``; ``flush()`` when the line is quiet or ends."""

    def __init__(self, *, default_day: date | None = None, max_line: int = DEFAULT_MAX_LINE,
                 clock: Callable[[], float] = time.time, learn_cycle: bool = True) -> None:
        """``clock`` (wall time) only places two-digit years in their century. ``learn_cycle=False``: an
        epoch ends only with the next time or :meth:`flush` (the quiet-line baseline)."""
        self._framer = NmeaFramer(max_line=max_line)
        self._epochs = EpochAssembler(default_day=default_day, clock=clock)
        self._epochs.cycle.enabled = learn_cycle
        self._counts = DecoderCounters()
        self.time_seen = False  # an epoch with a date and time was emitted

    @property
    def counters(self) -> DecoderCounters:
        framing = self._framer.counters
        counts = self._counts
        counts.garbage_bytes = framing.garbage_bytes
        counts.fragments = framing.fragments
        counts.late = self._epochs.late
        counts.held_dropped = self._epochs.held_dropped
        counts.cycle_violations = self._epochs.cycle.violations
        counts.split_epochs = self._epochs.cycle.splits
        ended = self._epochs.ended
        counts.ended_by_time, counts.ended_by_ender = ended["time"], ended["ender"]
        counts.ended_by_quiet = ended["quiet"]
        return counts

    @property
    def sentences(self) -> int:
        """Sentences accepted so far (cheaper than ``counters.sentences``)."""
        return self._counts.sentences

    @property
    def epoch_pending(self) -> bool:
        """An epoch with a time is open (it ends with the next time, its ender, or a quiet line)."""
        return self._epochs.pending

    @property
    def pending_sentences(self) -> int:
        """Sentences held: the open epoch's, or timeless ones waiting for a time (bounded)."""
        return self._epochs.held

    @property
    def cycle_learnt(self) -> bool:
        return self._epochs.cycle.ender is not None

    @property
    def cycle_settling(self) -> bool:
        """Still learning how this receiver's epochs end: a quiet line is weak evidence of an epoch's end."""
        return self._epochs.cycle.settling

    @property
    def late(self) -> int:
        """Sentences of an epoch already emitted (cheaper than ``counters``)."""
        return self._epochs.late

    @property
    def pending_tod_ms(self) -> int | None:
        """The time of day (ms) of the open epoch, if one is open."""
        return self._epochs.pending_tod_ms

    @property
    def epoch_period_s(self) -> float | None:
        """The time between the receiver's last two epochs (its rate), if known."""
        period = self._epochs.period_ms
        return None if period is None else period / 1000

    @property
    def split_epochs(self) -> int:
        """Sentences that arrived after a quiet line had closed their epoch (cheaper than ``counters``)."""
        return self._epochs.cycle.splits

    def forget_cycle(self) -> None:
        """A new stream: learn the receiver's cycle again, and forget what the last one said of its mode."""
        self._epochs.cycle.forget()
        self._epochs.model.reset()

    def feed(self, data: bytes) -> list[Fix]:
        return self._lines(self._framer.feed(data))

    def feed_line(self, line: str) -> list[Fix]:
        """One already-framed line (capture files are read line by line)."""
        return self._lines(self._framer.feed(line.encode("ascii", "replace") + b"\n"))

    def flush(self, *, end_of_stream: bool = False) -> list[Fix]:
        fixes = self._lines(self._framer.flush()) if end_of_stream else []
        done: list[Fix] = []
        self._epochs.flush(done)
        fixes += self._count(done)
        return fixes

    def _lines(self, lines: list[str]) -> list[Fix]:
        fixes: list[Fix] = []
        counts = self._counts
        add = self._epochs.add
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
                add(obs, fixes)
        return self._count(fixes) if fixes else fixes

    def _count(self, fixes: list[Fix]) -> list[Fix]:
        for fix in fixes:
            self._counts.epochs += 1
            if fix.has_position:
                self._counts.fixes += 1
            if fix.time_ms is not None:
                self.time_seen = True
        return fixes
