"""The normal reporting policy: when a fix becomes a position report.

Pure logic, no thread of its own (called by the core thread) and no clock of
its own (the caller passes monotonic ``now``), so it is tested without
sleeping. As fleet trackers do: on time (separate moving and stopped
intervals), on distance, on heading change, on speed change; plus on fix
lost or regained and on ignition on or off. During an emergency the core
reports at ``emergency_interval_s`` whatever this says.
"""

from __future__ import annotations

import math

from agent.config import ReportingConfig
from drivers.gnss.fix import Fix

EARTH_RADIUS_M = 6_371_000.0


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def heading_change(a: float, b: float) -> float:
    return abs((b - a + 180) % 360 - 180)


class ReportingPolicy:
    def __init__(self, cfg: ReportingConfig) -> None:
        self.cfg = cfg
        self._last_at: float | None = None
        self._last: Fix | None = None  # the last reported fix with a position
        self._had_position: bool | None = None

    def decide(self, fix: Fix, now: float) -> str | None:
        """The reason to report this fix now, or None."""
        has = fix.has_position
        had = self._had_position
        self._had_position = has
        if self._last_at is None:
            return "start"
        if had is not None and had != has:
            return "fix_regained" if has else "fix_lost"
        elapsed = now - self._last_at
        if not has:
            return "interval" if elapsed >= self.cfg.stopped_interval_s else None
        last = self._last
        speed = fix.speed_mps or 0.0
        moving = speed > self.cfg.moving_above_mps
        interval = self.cfg.moving_interval_s if moving else self.cfg.stopped_interval_s
        if elapsed >= interval:
            return "interval"
        if last is None or last.lat is None or last.lon is None:
            return "fix_regained"
        assert fix.lat is not None and fix.lon is not None
        if distance_m(last.lat, last.lon, fix.lat, fix.lon) >= self.cfg.distance_m:
            return "distance"
        if (moving and fix.course_deg is not None and last.course_deg is not None
                and heading_change(last.course_deg, fix.course_deg) >= self.cfg.heading_change_deg):
            return "heading"
        if abs(speed - (last.speed_mps or 0.0)) >= self.cfg.speed_change_mps:
            return "speed"
        return None

    def since_last(self, now: float) -> float:
        return float("inf") if self._last_at is None else now - self._last_at

    def reported(self, fix: Fix | None, now: float) -> None:
        """A position report went out (for any reason, emergency included)."""
        self._last_at = now
        if fix is not None and fix.has_position:
            self._last = fix
