"""Reporting: when the vehicle's position is sent, and what a position report says.

A component on the core thread. Normally the reporting policy
(:mod:`agent.policy`) decides from each receiver epoch; dispatch can ask for
a position now or a faster rhythm for a while (``set_reporting``); during an
emergency a position goes out every ``reporting.emergency_interval_s``,
tagged with the alert id, whatever the policy says (with each new epoch
once the interval is up; without one, when the receiver is gone, a report
with no live fix and the last known position with its age).

A report never carries a stale fix as live: ``fix`` is the epoch that
triggered it, or the last epoch if it is no older than
``gnss.max_fix_age_s``; otherwise ``fix`` is null, ``gnss_mode`` 1, and
``last_known`` carries the last position and its age.
"""

from __future__ import annotations

from agent.config import ReportingConfig
from agent.events import ConfigApplied, Event, FixReceived
from agent.messages import PositionReport, Priority
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
        """A position report now: of ``fix`` (an epoch just completed), else of the live fix if there
        is one; without a live fix, ``fix`` is null and the last known position goes with its age."""
        sender = self._sender
        now = sender.clock.monotonic()
        where = self._positioning
        if fix is None:
            live = where.live(now)
            mode = 1 if live is None else live.mode
        else:
            live = fix if fix.has_position else None
            mode = fix.mode if live is not None else 1
        report = PositionReport(
            **sender.envelope(sender.clock.moment_of(live)), reason=reason,
            fix=None if live is None else position_of(live), gnss_mode=mode,
            last_known=None if live is not None else where.last_known(now), alert_id=alert_id,
        )
        self.policy.reported(live, now)
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
