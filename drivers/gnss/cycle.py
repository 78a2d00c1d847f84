"""End of a receiver's cycle: which sentence closes it, learnt from the stream.

No thread of its own; one instance per epoch assembler (GNSS reader thread,
``gnss decode``). gpsd learns its "cycle enders" the same way
(driver_nmea0183.c, nmea_parse): the last time-stamped sentence before the
time changes ends the cycle, and a report is sent when it arrives, instead
of waiting for the line to go quiet. Ours differs where gpsd jitters:

- A sentence is known by its address and its rank in the epoch: the third
  ``GNGSA`` of a cycle is not the first. Only the sentences the decoder uses
  count (GSV, GST, GBS, TXT carry nothing for a Fix, so a 1 Hz GSV burst in
  a 5 Hz stream does not matter).
- The last sentence of an epoch with a fix (before the time changed, the
  line went quiet, or the ender fired) is the candidate; it becomes the
  ender once it has closed ``CONFIRM`` fix epochs in a row, replacing any
  earlier one. An epoch that ends with another sentence breaks the run.
  Epochs without a fix do not teach: receivers leave sentences out while
  they have no fix, and a no-fix epoch can wait for the next time.
- A quiet line is not proof that an epoch is over: a USB or Bluetooth
  adapter delivers bytes in chunks, and some receivers send their GGA tens
  of ms after their RMC. An epoch closed by a quiet line teaches only when
  the next epoch begins; a sentence of it that arrives in between (a
  *split*, counted in ``splits``) was its real last sentence, and is what it
  teaches. The reader widens its quiet gap on a split, and waits for a
  generous one while the cycle is being learnt (``settling``).
- When a sentence of the same epoch comes after the ender fired (a ZDA every
  fifth epoch after the RMC, a fifth GSA when there were four), the ender was
  wrong: it is forgotten and that key needs four times as many epochs in a row
  before it is trusted again. A receiver whose cycle varies that way never
  gets an ender, and the reader keeps the quiet-line fallback for it. A
  sentence without a time after the ender belongs to the epoch that went out,
  unless it is the learnt first sentence of a cycle (a receiver that sends
  its GSA before its timed sentences, as the reader sees from the quiet line
  between bursts): then it opens the next one.
"""

from __future__ import annotations

from drivers.gnss.sentences import Observation

CONFIRM = 3

Key = tuple[str, int]


class CycleLearner:
    __slots__ = ("_candidate", "_first", "_first_candidate", "_first_streak", "_last", "_provisional", "_rank",
                 "_split", "_streak", "_strikes", "_taught", "enabled", "ender", "just_emitted", "splits", "starter",
                 "violations")

    def __init__(self) -> None:
        self._rank: dict[str, int] = {}
        self._first: Key | None = None
        self._first_candidate: Key | None = None
        self._first_streak = 0
        self.starter: Key | None = None  # the learnt first sentence of a cycle
        self._last: Key | None = None
        self._candidate: Key | None = None
        self._streak = 0
        self._strikes: dict[Key, int] = {}
        self.ender: Key | None = None
        self.just_emitted = False  # the last epoch went out on its ender; no new epoch has started yet
        self.violations = 0
        self.enabled = True
        self._provisional: tuple[Key | None, Key | None, bool] | None = None  # closed by a quiet line: first, last, fix
        self._split = False  # the provisional epoch had a late sentence (counted once)
        self._taught = 0  # fix epochs learnt from
        self.splits = 0  # sentences that came after a quiet line had closed their epoch

    @property
    def settling(self) -> bool:
        """Still learning how this receiver's epochs end (fewer than ``CONFIRM`` fix epochs seen)."""
        return self.ender is None and self._taught < CONFIRM

    def observe(self, obs: Observation) -> bool:
        """One sentence of the open epoch; True if it is the learnt ender."""
        if self._provisional is not None:
            first, last, fix = self._provisional
            self._provisional, self._rank = None, {}
            self._teach(first, last, fix)
        address = obs.talker + obs.kind
        rank = self._rank.get(address, 0) + 1
        self._rank[address] = rank
        key = (address, rank)
        if self._last is None:
            self._first = key
        self._last = key
        self.just_emitted = False
        return key == self.ender

    def starts_cycle(self, obs: Observation) -> bool:
        """Is this sentence the learnt first one of a cycle (a GSA sent before the timed sentences)?"""
        return self.starter is not None and self.starter == (obs.talker + obs.kind, 1)

    def closed(self, how: str, *, fix: bool) -> None:
        """The epoch was emitted, ``how``: "time", "ender" or "quiet". Learn from how it ended (only fix epochs
        teach: without a fix many receivers leave sentences out, and a no-fix epoch can wait for the next
        time); an epoch closed by a quiet line teaches when the next one begins (:meth:`late`)."""
        key, first, self._last, self._first = self._last, self._first, None, None
        self.just_emitted = how == "ender"
        if how == "quiet":
            self._provisional = (first, key, fix)  # the ranks stay: a late sentence continues them
            self._split = False
            return
        self._rank = {}
        self._teach(first, key, fix)

    def late(self, obs: Observation) -> None:
        """A sentence of the epoch just emitted. After a quiet line: the epoch was split, and this sentence is
        its last so far. After the ender: the ender was wrong."""
        if self._provisional is not None:
            address = obs.talker + obs.kind
            rank = self._rank.get(address, 0) + 1
            self._rank[address] = rank
            first, _, fix = self._provisional
            self._provisional = (first, (address, rank), fix)
            if not self._split:
                self._split = True
                self.splits += 1
        else:
            self.violated()

    def _teach(self, first: Key | None, key: Key | None, fix: bool) -> None:
        if key is None or not fix:
            return
        self._taught += 1
        if first == self._first_candidate:
            self._first_streak += 1
        else:
            self._first_candidate, self._first_streak = first, 1
        self.starter = self._first_candidate if self._first_streak >= CONFIRM else None
        if key == self._candidate:
            self._streak += 1
        else:
            self._candidate, self._streak = key, 1
        if self.enabled and self._streak >= CONFIRM * 4 ** self._strikes.get(key, 0):
            self.ender = key  # a new ender replaces the old one (a receiver that changed its talker ids)

    def violated(self) -> None:
        """A sentence of the epoch arrived after its ender fired."""
        if self.ender is not None and self.just_emitted:
            self.violations += 1
            self._strikes[self.ender] = self._strikes.get(self.ender, 0) + 1
            self.ender = self._candidate = None
            self._streak = 0

    def forget(self) -> None:
        """A new stream (the port reopened, maybe another receiver)."""
        enabled = self.enabled
        self.__init__()  # type: ignore[misc]
        self.enabled = enabled
