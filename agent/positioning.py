"""Positioning: what the unit knows of where it is, from the GNSS reader's events.

A component on the core thread. It keeps the last epoch and the last epoch
with a position, each with the monotonic time the reader completed it, and
the receiver's state. A fix is *live* for ``gnss.max_fix_age_s`` after its
epoch; after that it is only the *last known* position, with its age: a
stale fix is never sent as live. Every epoch is offered to the clock, which
takes the receiver's time only from a live fix it can trust. Receiver states
that need a technician, a simulated fix, and a receiver time the clock had
to refuse are faults.
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.clock import Clock
from agent.config import GnssConfig
from agent.events import ConfigApplied, Event, FixReceived, GnssStateChanged
from agent.messages import LastKnown, Position
from agent.unit import Faults
from drivers.gnss.fix import Fix
from drivers.gnss.reader import GnssState

FAULT_STATES = frozenset({"device_missing", "no_nmea", "no_data", "no_time"})


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
    def __init__(self, cfg: GnssConfig, clock: Clock, faults: Faults) -> None:
        self._max_age = cfg.max_fix_age_s
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
                self._epoch(fix, at)
            case GnssStateChanged(state=state, detail=detail):
                self.state = state
                if state.value in FAULT_STATES:
                    self._faults.raise_(f"gnss_{state.value}", detail)
                else:
                    for code in [c for c in self._faults.open if c.startswith("gnss_")
                                 and c.removeprefix("gnss_") in FAULT_STATES]:
                        self._faults.clear(code)
            case ConfigApplied(cfg=cfg):
                self._max_age = cfg.gnss.max_fix_age_s
            case _:
                pass

    def tick(self, now: float) -> None:
        pass

    def _epoch(self, fix: Fix, at: float) -> None:
        self.last_fix, self.last_fix_at = fix, at
        if fix.simulated:
            self._faults.raise_("gnss_simulated", "the receiver is in simulator mode: its positions are not used")
        elif "gnss_simulated" in self._faults:
            self._faults.clear("gnss_simulated")
        if fix.has_position:
            self.last_position_fix, self.last_position_at = fix, at
        self._clock.offer(fix, at)
        off = self._clock.disagreement_s
        if off is not None:
            self._faults.raise_("gnss_time_disagrees", f"the receiver's time is {off:+.0f} s off the synchronised "
                                                       "system clock: not used")
        elif "gnss_time_disagrees" in self._faults:
            self._faults.clear("gnss_time_disagrees")

    # --- what others read ------------------------------------------------------------

    def live(self, now: float) -> Fix | None:
        """The last epoch, if it has a position no older than ``gnss.max_fix_age_s``."""
        fix, at = self.last_fix, self.last_fix_at
        if fix is None or at is None or not fix.has_position or now - at > self._max_age:
            return None
        return fix

    def last_known(self, now: float) -> LastKnown | None:
        fix, at = self.last_position_fix, self.last_position_at
        if fix is None or at is None:
            return None
        position = position_of(fix)
        return None if position is None else LastKnown(fix=position, age_s=round(max(0.0, now - at), 1))

    def position_age(self, now: float) -> float | None:
        return None if self.last_position_at is None else now - self.last_position_at
