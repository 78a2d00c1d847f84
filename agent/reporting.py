"""Reporting: when the vehicle's position is sent, and what a position report says.

A component on the core thread. Normally the reporting policy
(:mod:`agent.policy`) decides from each receiver epoch; dispatch can ask for
a position now or a faster rhythm for a while (``set_reporting``); during an
emergency a position goes out every ``reporting.emergency_interval_s``,
tagged with the alert id, whatever the policy says (with each new epoch
once the interval is up, and without one, when the receiver is gone, from
the last known fix).
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.config import ReportingConfig
from agent.events import ConfigApplied, Event, FixReceived
from agent.messages import PositionReport, Priority, TimeSource
from agent.policy import ReportingPolicy
from agent.positioning import Positioning, position_of
from agent.unit import Sender
from drivers.gnss.fix import Fix


class Reporting:
    def __init__(self, cfg: ReportingConfig, sender: Sender, positioning: Positioning) -> None:
        self._cfg = cfg
        self._sender = sender
        self._positioning = positioning
        self.policy = ReportingPolicy(cfg)
        self._override: tuple[float, float] | None = None  # (interval_s, until monotonic): set_reporting
        self._emergency: str | None = None  # the open emergency's alert id
        self._last_emergency_report = float("-inf")
        self._last_emergency_fix: Fix | None = None

    # --- what others ask -------------------------------------------------------------

    def emergency(self, alert_id: str | None) -> None:
        """An emergency opened (its alert id) or closed (None): it owns the reporting rhythm."""
        if alert_id != self._emergency:
            self._emergency = alert_id
            self._last_emergency_report = float("-inf")

    def faster(self, interval_s: float, duration_s: float, now: float) -> None:
        self._override = (interval_s, now + duration_s)

    def report(self, reason: str, fix: Fix | None = None, *, alert_id: str | None = None) -> None:
        """A position report now: of ``fix``, else of the last epoch."""
        fix = fix or self._positioning.last_fix
        moment = None
        if fix is not None and fix.time_ms is not None:
            moment = (datetime.fromtimestamp(fix.time_ms / 1000, tz=UTC), TimeSource.GNSS)
        sender = self._sender
        report = PositionReport(
            **sender.envelope(moment), reason=reason, fix=None if fix is None else position_of(fix),
            gnss_mode=1 if fix is None else fix.mode, alert_id=alert_id,
        )
        self.policy.reported(fix, sender.clock.monotonic())
        sender.send(report, Priority.POSITION)

    # --- the component -----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        match event:
            case FixReceived(fix=fix):
                self._on_fix(fix, now)
            case ConfigApplied(cfg=cfg):
                self._cfg = cfg.reporting
                self.policy.cfg = cfg.reporting
            case _:
                pass

    def _on_fix(self, fix: Fix, now: float) -> None:
        if self._emergency is not None:
            return  # the emergency rhythm, from tick()
        reason = self.policy.decide(fix, now)
        if reason is None and self._override is not None:
            interval, until = self._override
            if now > until:
                self._override = None
            elif self.policy.since_last(now) >= interval:
                reason = "requested"
        if reason is not None:
            self.report(reason, fix)

    def tick(self, now: float) -> None:
        if self._emergency is None:
            return
        interval = self._cfg.emergency_interval_s
        elapsed = now - self._last_emergency_report
        last = self._positioning.last_fix
        fresh = last is not self._last_emergency_fix
        if (fresh and elapsed >= interval * 0.9) or elapsed >= interval * 1.5:
            self._last_emergency_report = now
            self._last_emergency_fix = last
            self.report("emergency", alert_id=self._emergency)
