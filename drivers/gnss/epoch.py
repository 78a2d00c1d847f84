"""Epochs: the sentences of one receiver cycle assembled into one Fix.

No thread of its own; used by the GNSS reader thread and by ``gnss decode``.
A receiver sends several sentences per cycle (RMC, GGA, GSA, VTG, ZDA...),
in an order of its own and at 1 to 10 Hz. Sentences that carry a time belong
to the epoch of that time (compared as integer milliseconds, since ``.0``,
``.00`` and ``.000`` occur within one epoch); sentences without one (GSA,
VTG) belong to the epoch being assembled, or, between epochs, to the next
time that comes: the epoch a quiet line closed, if a sentence of its time
follows them (the tail of an epoch delivered in two bursts), else the next
epoch (a receiver that sends its GSA first). An epoch ends when a sentence with
another time arrives, when the sentence that closes this receiver's cycle
arrives (:mod:`drivers.gnss.cycle`), or when the reader sees the line go
quiet (:meth:`EpochAssembler.flush`).

Rules for what an epoch says, with their reasons (gpsd 3.27's
driver_nmea0183.c, timebase.c and libgpsd_core.c read for each; gpsd's
verdict on the generated streams of tests/fixtures/nmea/gpsd checks them):

1. Fix or no fix, 2D or 3D: the sentences are read in the order received,
   each stating a mode, the last statement standing, as gpsd does
   (:mod:`drivers.gnss.verdict` has the rules, each with its reason, and
   where we are stricter). A GGA saying its solution uses no satellite after
   an RMC saying valid withdraws the fix; the same GGA before the RMC does
   not. gpsd 3.22 and 3.27 agree on that order; an earlier version of this
   decoder vetoed the fix whatever the order, and lost fixes gpsd reports.
2. A position comes only from a sentence that itself states a fix (see
   sentences.py), never 0,0: the last such sentence of the epoch, as gpsd
   reports the last coordinates it read. An epoch without one is mode 1.
   An altitude is reported with 3D fixes only.
3. Simulated (GGA quality 8, mode indicator S anywhere in the epoch): no
   position, ``simulated`` set, and the core raises ``gnss_simulated``.
   gpsd reports these as fixes (status 8, or unflagged for a GNS); a patrol
   unit must never place a car from a simulator.
4. Time: the date comes from a ZDA (4-digit year) or a valid RMC of the
   epoch, else the last date seen (rolled over at midnight), else the date
   the caller supplies (``gnss decode --date``); without any, the fix has no
   time. Status-V RMC dates are never read (sentences.py). gpsd 3.27 does
   not roll the date over at midnight for a receiver without RMC or ZDA in
   every epoch (GGA+GSA, a ZDA every few epochs): until the next date it
   stamps the new day's epochs with the old day. We do not copy that: the
   time of a position is what dispatch reads first.
5. Two-digit years: the century is the one that puts the year nearest the
   reference year R = max(``TIME_FLOOR``, system clock), i.e. within
   [R - 50, R + 49]: "99" is 1999, "00" 2000, "80" 1980 today and 2080 in
   2079. gpsd uses the century of its start time and wraps 2080 to 1980.
6. GPS week rollover: a receiver that lost 1024 weeks reports a date ~19.6
   years in the past. The date is reported as sent (as gpsd does on its
   regression logs, so the epochs line up with gpsd's), and
   ``Fix.time_trusted`` is False for any time before the build-date floor:
   such a time never sets the clock. Live, gpsd (3.22 and 3.27 alike) moves
   every date before 2017 forward by 1024 weeks, which hides the fault.
7. Bounded memory: at most ``MAX_HELD`` sentences wait for an epoch (a cold
   start sends sentences without a time for minutes); older ones are dropped
   and counted (``held_dropped``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta

from drivers.gnss.cycle import CycleLearner
from drivers.gnss.fix import MODE_2D, MODE_NO_FIX, TIME_FLOOR, Fix
from drivers.gnss.sentences import Observation
from drivers.gnss.verdict import NOT_SEEN, ModeModel

_DAY_MS = 86_400_000
_STATING_KINDS = ("GGA", "GNS", "RMC", "GLL")
_EPOCH_MIDNIGHT = datetime(1970, 1, 1, tzinfo=UTC).date()
MAX_HELD = 64  # sentences held for one epoch: 4 per second for 16 s without a time, or a frozen time


class EpochAssembler:
    """Feeds observations, appends one :class:`Fix` per completed epoch to ``out``."""

    __slots__ = ("_emitted_tod", "_last_day", "_last_tod", "_obs", "_tod", "clock", "cycle", "default_day", "ended",
                 "held_dropped", "late", "max_held", "model", "period_ms")

    def __init__(self, *, default_day: date | None = None, clock: Callable[[], float] = time.time,
                 max_held: int = MAX_HELD) -> None:
        self._obs: list[Observation] = []
        self._tod: int | None = None
        self._last_day: date | None = None
        self._last_tod: int | None = None
        self._emitted_tod: int | None = None
        self.period_ms: int | None = None  # between the last two epochs (the receiver's rate), if under 5 s
        self.default_day = default_day
        self.clock = clock
        self.max_held = max_held
        self.cycle = CycleLearner()
        self.model = ModeModel()
        self.late = 0  # sentences of an epoch already emitted
        self.held_dropped = 0  # sentences dropped from a full buffer (no time yet, or a time that never moves)
        self.ended = {"time": 0, "ender": 0, "quiet": 0}  # how epochs ended: next time, learnt ender, flush

    def add(self, obs: Observation, out: list[Fix]) -> None:
        """Add one observation; append the Fixes of the epochs it completes."""
        tod = obs.tod_ms
        if tod is not None and tod != self._tod:
            if self._tod is None and tod == self._emitted_tod:
                held, self._obs = self._obs, []  # sentences without a time since: the same epoch's too
                for late in [*held, obs]:
                    self._late(late)  # its epoch went out already: do not emit it twice
                return
            previous = self._tod if self._tod is not None else self._emitted_tod
            if previous is not None and 0 < tod - previous < 5_000:
                self.period_ms = tod - previous
            self._finish(out, how="time")
            self._tod = tod
            for waiting in self._obs:
                self.cycle.observe(waiting)  # held without a time: they open this epoch
        elif tod is None and self._tod is None and self.cycle.just_emitted and not self._obs \
                and not self.cycle.starts_cycle(obs):
            self._late(obs)  # after the cycle's last sentence: it belonged to the epoch that went out
            return
        if len(self._obs) >= self.max_held:
            del self._obs[0]
            self.held_dropped += 1
        self._obs.append(obs)
        if self._tod is None:
            return  # no time yet: whose epoch this is, the next time says
        if self.cycle.observe(obs):
            self._finish(out, how="ender")  # the sentence that closes this receiver's cycle

    def flush(self, out: list[Fix]) -> None:
        """The line went quiet (or the stream ended): emit the open epoch."""
        self._finish(out, how="quiet")

    @property
    def pending(self) -> bool:
        """An epoch with a time is open."""
        return self._tod is not None

    @property
    def pending_tod_ms(self) -> int | None:
        """The time of day of the open epoch."""
        return self._tod

    @property
    def held(self) -> int:
        return len(self._obs)

    def _late(self, obs: Observation) -> None:
        self.late += 1
        self.model.apply(obs, new_epoch=False)  # too late for its epoch, not for what it says of the receiver
        self.cycle.late(obs)
        if obs.day is not None and obs.tod_ms is not None:
            self._last_day, self._last_tod = obs.day, obs.tod_ms  # a late ZDA still tells the calendar

    def _finish(self, out: list[Fix], *, how: str) -> None:
        tod, observations = self._tod, self._obs
        if tod is None:
            return  # only timeless sentences so far: they wait for a time
        self._tod, self._obs = None, []
        self._emitted_tod = tod
        self.ended[how] += 1
        fix = self._build(tod, observations)
        self.cycle.closed(how, fix=fix.has_position)
        out.append(fix)

    # --- the rules ------------------------------------------------------------

    def _day_for(self, tod: int, observations: list[Observation]) -> date | None:
        day = next((o.day for o in observations if o.day is not None), None)
        if day is None:
            rmc = next((o.ddmmyy for o in observations if o.ddmmyy is not None), None)
            if rmc is not None:
                day = self._resolve_century(*rmc)
        if day is None and self._last_day is not None and self._last_tod is not None:
            day = self._last_day
            if tod < self._last_tod - _DAY_MS // 2:
                day = day + timedelta(days=1)  # midnight passed since the last date
        if day is None:
            day = self.default_day
        if day is not None:
            self._last_day, self._last_tod = day, tod
        return day

    def _resolve_century(self, day: int, month: int, yy: int) -> date | None:
        try:
            now_year = datetime.fromtimestamp(self.clock(), tz=UTC).year
        except (ValueError, OverflowError, OSError):
            now_year = TIME_FLOOR.year  # a clock beyond what datetime can hold: the floor decides
        reference = max(TIME_FLOOR.year, now_year)
        year = reference - 50 + (yy - (reference - 50)) % 100
        try:
            return date(year, month, day)
        except ValueError:
            return None  # 29 February of a year that has none

    def _build(self, tod: int, observations: list[Observation]) -> Fix:
        day = self._day_for(tod, observations)
        time_ms = None if day is None else (day - _EPOCH_MIDNIGHT).days * _DAY_MS + tod
        simulated = False
        quality = hdop = speed = course = None
        model = self.model
        final = best = NOT_SEEN  # the state after the last timed sentence; the best state gpsd would report
        reason: str | None = None
        opened = reported = False
        for obs in observations:
            simulated = simulated or obs.simulated
            if quality is None:
                quality = obs.quality
            if hdop is None:
                hdop = obs.hdop
            if speed is None:
                speed = obs.speed_mps
            if course is None:
                course = obs.course_deg
            timed = obs.tod_ms is not None
            report = model.apply(obs, new_epoch=timed and not opened) and (opened or timed)
            opened = opened or timed
            if timed and obs.kind in _STATING_KINDS:
                final, reason = model.fix_mode, model.reason
            elif report and opened:
                final = max(final, model.fix_mode)  # a GSA sent after the position sentences raises, never lowers
            if report:
                reported, best = True, max(best, model.fix_mode)
        mode = final if final < MODE_2D or not reported else best
        if final >= MODE_2D > mode:
            reason = "the fix came after the end of the receiver's cycle"
        sats = _satellites_used(observations)
        source = _last_position(observations)
        if simulated or source is None or mode < MODE_2D:
            if simulated:
                reason = "simulated"
            elif source is None:
                reason = "no sentence states a fix"
            elif mode == NOT_SEEN or reason is None:
                reason = "no sentence states the mode"
            return Fix(time_ms=time_ms, mode=MODE_NO_FIX, quality=quality, sats_used=sats, hdop=hdop,
                       simulated=simulated, no_fix_reason=reason)
        return Fix(
            time_ms=time_ms,
            mode=mode,
            lat=source.lat,
            lon=source.lon,
            alt_msl=_fix_altitude(observations),  # a reported altitude is kept, 2D included (as gpsd)
            speed_mps=speed,
            course_deg=course,
            quality=quality,
            sats_used=sats,
            hdop=hdop,
        )


def _satellites_used(observations: list[Observation]) -> int | None:
    """GN talkers count every system; other talkers (GPGGA beside GAGGA) count their own: summed."""
    combined: int | None = None
    per_talker: dict[str, int] = {}
    for obs in observations:
        if obs.sats_used is None:
            continue
        if obs.talker == "GN":
            combined = obs.sats_used if combined is None else max(combined, obs.sats_used)
        else:
            per_talker[obs.talker] = max(per_talker.get(obs.talker, 0), obs.sats_used)
    if not per_talker:
        return combined
    return max(combined or 0, sum(per_talker.values()))


def _last_position(observations: list[Observation]) -> Observation | None:
    """The last sentence stating a fix with coordinates (gpsd reports the last coordinates it read)."""
    for obs in reversed(observations):
        if obs.fix and obs.lat is not None and obs.kind in _STATING_KINDS:
            return obs
    return None


def _fix_altitude(observations: list[Observation]) -> float | None:
    for obs in reversed(observations):
        if obs.fix and obs.alt_msl is not None:
            return obs.alt_msl
    return None
