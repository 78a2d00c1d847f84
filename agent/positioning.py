"""Positioning: what the unit knows of where it is, from the GNSS reader's events.

A component on the core thread. It keeps the last epoch, the last epoch with
a position and when (monotonic) it came, and the receiver's state; it turns
receiver states that need a technician into faults, and lets the others
(reporting, alerts, health) read all of it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.clock import Clock
from agent.events import Event, FixReceived, GnssStateChanged
from agent.messages import Position
from agent.unit import Faults
from drivers.gnss.fix import Fix
from drivers.gnss.reader import GnssState

FAULT_STATES = frozenset({GnssState.DEVICE_MISSING, GnssState.NO_NMEA, GnssState.NO_DATA})


def position_of(fix: Fix) -> Position | None:
    if not fix.has_position:
        return None
    assert fix.lat is not None and fix.lon is not None
    return Position(
        lat=fix.lat, lon=fix.lon, alt_msl=fix.alt_msl, speed_mps=fix.speed_mps, course_deg=fix.course_deg,
        mode=3 if fix.mode == 3 else 2, sats_used=fix.sats_used, hdop=fix.hdop, quality=fix.quality,
        fix_time=None if fix.time_ms is None else datetime.fromtimestamp(fix.time_ms / 1000, tz=UTC),
    )


class Positioning:
    def __init__(self, clock: Clock, faults: Faults) -> None:
        self._clock = clock
        self._faults = faults
        self.state = GnssState.OPENING
        self.last_fix: Fix | None = None
        self.last_fix_at: float | None = None  # monotonic
        self.last_position_fix: Fix | None = None
        self.last_position_at: float | None = None  # monotonic

    def handle(self, event: Event, now: float) -> None:
        match event:
            case FixReceived(fix=fix, at=at):
                if fix.time_ms is not None:
                    self._clock.gnss_time(fix.time_ms / 1000)
                self.last_fix, self.last_fix_at = fix, at
                if fix.has_position:
                    self.last_position_fix, self.last_position_at = fix, at
            case GnssStateChanged(state=state, detail=detail):
                self.state = state
                if state in FAULT_STATES:
                    self._faults.raise_(f"gnss_{state.value}", detail)
                else:
                    self._faults.clear_prefix("gnss_")
            case _:
                pass

    def tick(self, now: float) -> None:
        pass

    def position_age(self, now: float) -> float | None:
        return None if self.last_position_at is None else now - self.last_position_at
