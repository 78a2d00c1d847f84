"""The Fix: what one receiver epoch says about where the vehicle is.

Plain immutable data, created by the epoch assembler (GNSS reader thread or
``gnss decode``) and read by anyone. A Fix without a position (mode 1) has
``lat``/``lon`` of ``None``: never 0,0. A simulated epoch (the receiver in
simulator mode) is mode 1 with ``simulated`` set: never a position.

``TIME_FLOOR`` is the build-date floor: no live receiver can be earlier than
the day this code was written, so a receiver time before it is wrong (a GPS
week rollover, a pre-fix default date such as 1980-01-06) and
``time_trusted`` is False. The time is still reported as the receiver sent
it, as gpsd does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

MODE_NO_FIX = 1
MODE_2D = 2
MODE_3D = 3

#: The build-date floor (UTC). Move it forward when releasing; never past the release date.
TIME_FLOOR = date(2026, 11, 1)
TIME_FLOOR_MS = int(datetime(TIME_FLOOR.year, TIME_FLOOR.month, TIME_FLOOR.day, tzinfo=UTC).timestamp()) * 1000


@dataclass(frozen=True, slots=True)
class Fix:
    """One epoch of the receiver, in SI units and decimal degrees."""

    time_ms: int | None  # UTC, milliseconds since the Unix epoch; None if no date is known
    mode: int  # 1 no fix, 2 = 2D, 3 = 3D
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None  # metres above mean sea level, as reported (in a 2D fix too, as gpsd)
    speed_mps: float | None = None
    course_deg: float | None = None  # degrees true
    quality: int | None = None  # GGA fix quality (1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float...)
    sats_used: int | None = None
    hdop: float | None = None
    simulated: bool = False  # the receiver is in simulator mode: mode 1, no position, a fault for the core
    no_fix_reason: str | None = None  # why an epoch is mode 1 ("simulated", "no satellites used"...)

    @property
    def has_position(self) -> bool:
        return self.mode >= MODE_2D and self.lat is not None and self.lon is not None

    @property
    def time_trusted(self) -> bool:
        """A receiver time that may set the unit's idea of now: stated with a live fix, not before the floor."""
        return self.time_ms is not None and self.has_position and self.time_ms >= TIME_FLOOR_MS

    @property
    def time_iso(self) -> str | None:
        """``2012-07-04T05:11:34.000Z``, or None when the date is unknown."""
        if self.time_ms is None:
            return None
        moment = datetime.fromtimestamp(self.time_ms / 1000, tz=UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{self.time_ms % 1000:03d}Z"

    def as_report(self) -> dict[str, Any]:
        """The record printed by ``patrol-agent gnss decode``."""
        return {
            "time": self.time_iso,
            "mode": self.mode,
            "lat": self.lat,
            "lon": self.lon,
            "alt_msl": self.alt_msl,
            "speed_mps": self.speed_mps,
            "course_deg": self.course_deg,
            "quality": self.quality,
            "sats_used": self.sats_used,
            "hdop": self.hdop,
            "simulated": self.simulated,
            "no_fix_reason": self.no_fix_reason,
        }
