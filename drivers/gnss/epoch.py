"""Epochs: the sentences of one receiver cycle assembled into one Fix.

No thread of its own; used by the GNSS reader thread and by ``gnss decode``.
A receiver sends several sentences per cycle (RMC, GGA, GSA, VTG, ZDA...),
in an order of its own and at 1 to 10 Hz. Sentences that carry a time belong
to the epoch of that time (compared as integer milliseconds, since ``.0``,
``.00`` and ``.000`` occur within one epoch); sentences without one (GSA,
VTG) belong to the epoch being assembled. An epoch ends when a sentence with
another time arrives, or when the reader sees the line go quiet
(:meth:`EpochAssembler.flush`).

Rules for what an epoch says:
- a position comes only from a sentence that itself states a fix: RMC status
  A, GGA quality > 0, GNS mode not N, GLL status A. Never 0,0 from a no-fix
  sentence; an epoch without one is mode 1 with no position.
- GGA is preferred (it carries quality and altitude), then GNS, RMC, GLL.
- the date comes from RMC or ZDA in the epoch, else the last date seen (rolled
  over at midnight), else the date the caller supplies; without any, the
  fix has no time.
- the mode is the higher of the receiver's GSA and the inferred one: 3D when
  the receiver gives an altitude with four or more satellites in use (enough
  for a 3D solution; some multi-constellation receivers, e.g. Telit, send a
  per-system GSA of "2" while solving in 3D, as gpsd also concludes), else
  2D. A GSA can raise the mode, never invent a position.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from drivers.gnss.fix import MODE_2D, MODE_3D, MODE_NO_FIX, Fix
from drivers.gnss.sentences import Observation

_DAY_MS = 86_400_000
_POSITION_PREFERENCE = ("GGA", "GNS", "RMC", "GLL")
_EPOCH_MIDNIGHT = datetime(1970, 1, 1, tzinfo=UTC).date()


class EpochAssembler:
    """Feeds observations, yields one :class:`Fix` per completed epoch."""

    __slots__ = ("_emitted_tod", "_last_day", "_last_tod", "_obs", "_tod", "default_day", "late")

    def __init__(self, *, default_day: date | None = None) -> None:
        self._obs: list[Observation] = []
        self._tod: int | None = None
        self._last_day: date | None = None
        self._last_tod: int | None = None
        self._emitted_tod: int | None = None
        self.default_day = default_day
        self.late = 0  # sentences of an epoch already emitted (after a quiet-line flush)

    def add(self, obs: Observation) -> Fix | None:
        """Add one observation; return the previous epoch's Fix if it just ended."""
        tod = obs.tod_ms
        if tod is None or tod == self._tod:
            self._obs.append(obs)
            return None
        if tod == self._emitted_tod and self._tod is None:
            self.late += 1  # its epoch went out already; do not emit it twice
            return None
        done = self._finish()
        self._tod = tod
        self._obs.append(obs)
        return done

    def flush(self) -> Fix | None:
        """The line went quiet (or the stream ended): emit the open epoch."""
        return self._finish()

    @property
    def pending(self) -> bool:
        return self._tod is not None

    def _finish(self) -> Fix | None:
        tod, observations = self._tod, self._obs
        if tod is None:
            return None  # only timeless sentences so far: they wait for a time
        self._tod, self._obs = None, []
        self._emitted_tod = tod
        return self._build(tod, observations)

    def _day_for(self, tod: int, observations: list[Observation]) -> date | None:
        day = next((o.day for o in observations if o.day is not None), None)
        if day is None and self._last_day is not None and self._last_tod is not None:
            day = self._last_day
            if tod < self._last_tod - _DAY_MS // 2:
                day = day + timedelta(days=1)  # midnight passed since the last date
        if day is None:
            day = self.default_day
        if day is not None:
            self._last_day, self._last_tod = day, tod
        return day

    def _build(self, tod: int, observations: list[Observation]) -> Fix:
        day = self._day_for(tod, observations)
        time_ms = None if day is None else (day - _EPOCH_MIDNIGHT).days * _DAY_MS + tod
        source = _best_position(observations)
        if source is None:
            return Fix(time_ms=time_ms, mode=MODE_NO_FIX, quality=_first_int(observations, "quality"))
        speed = _first(observations, "speed_mps")
        course = _first(observations, "course_deg")
        sats = _first_int(observations, "sats_used")
        alt = _first(observations, "alt_msl")
        mode = _mode(observations, alt, sats)
        return Fix(
            time_ms=time_ms,
            mode=mode,
            lat=source.lat,
            lon=source.lon,
            alt_msl=alt if mode == MODE_3D else None,
            speed_mps=speed,
            course_deg=course,
            quality=_first_int(observations, "quality"),
            sats_used=sats,
            hdop=_first(observations, "hdop"),
        )


def _best_position(observations: list[Observation]) -> Observation | None:
    for kind in _POSITION_PREFERENCE:
        for obs in observations:
            if obs.kind == kind and obs.valid and obs.lat is not None:
                return obs
    return None


def _first(observations: list[Observation], name: str) -> int | float | None:
    for obs in observations:
        value = getattr(obs, name)
        if value is not None:
            return value  # type: ignore[no-any-return]
    return None


def _first_int(observations: list[Observation], name: str) -> int | None:
    value = _first(observations, name)
    return None if value is None else int(value)


def _mode(observations: list[Observation], alt: float | None, sats: float | None) -> int:
    inferred = MODE_3D if alt is not None and (sats is None or sats >= 4) else MODE_2D
    gsa = [o.gsa_mode for o in observations if o.gsa_mode is not None]
    return max(inferred, *gsa) if gsa else inferred
