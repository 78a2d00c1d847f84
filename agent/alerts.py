"""Panic alerts: from the officer's thumb to the dispatcher's screen, and back.

A component on the core thread. The lifecycle of an alert:

    raised --(broker PUBACK)--> delivered --(dispatch ack)--> acknowledged
       \\______________________________________________________/
                |                                 |
         cleared (dispatch)            cancelled (officer's gesture)

- raised: the alert is in the outbox, fsynced, before anything else happens;
  the officer sees a fast blink. It carries the best position known.
- until dispatch acknowledges, the alert is published again every
  ``panic.republish_s`` with the same id (once the previous copy is out).
- the emergency is persisted (the alerts database's ``state`` table,
  fsynced) *in the same transaction* as the alert message that changes it
  (raised, acknowledged, cleared, cancelled), so that after a kill or a
  power cut the vehicle's emergency and what dispatch receives agree: a
  restart restores the newest open emergency and never an older one, and a
  restart after a clear has none. Only dispatch (clear) or the officer's
  cancel gesture (reported as ``cancelled``, never silently dropped) ends
  it, and the end is on disk before it is published. A saved emergency that
  does not validate is moved aside (``emergency.rejected-<time>``) and
  reported (``emergency_unreadable``); the daemon runs without it.
- during an emergency the reporting component sends positions at the
  emergency rate, tagged with the alert id.

Test alarms (``patrol-agent panic test``) take the same path, flagged
``test``, without entering the emergency; one ends when dispatch
acknowledges or clears it, when the technician's tool hangs up, or after
``panic.test_timeout_s`` without an acknowledgement, published then as
``unacknowledged``.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.boot import split
from agent.config import AgentConfig, PanicConfig
from agent.control import ControlRequest
from agent.events import Acked, ConfigApplied, Event
from agent.messages import Alert, AlertAck, AlertState, BestPosition, PositionSource, Priority
from agent.positioning import Positioning, position_of
from agent.reporting import Reporting
from agent.unit import Faults, Sender
from drivers.gpio import Feedback

log = logging.getLogger(__name__)

STATE_KEY = "emergency"
OPEN = (AlertState.RAISED.value, AlertState.DELIVERED.value)


@dataclass
class OpenAlert:
    alert_id: str
    trigger: str
    raised_at: str  # ISO, as published
    state: str = AlertState.RAISED.value
    test: bool = False
    covert: bool = False
    attempt: int = 0
    pending: list[int] = field(default_factory=list)  # outbox rows of this alert not yet acknowledged
    last_published: float = 0.0  # monotonic
    raised_mono: float = float("-inf")  # monotonic, this run (a restored alert was raised "long ago")

    @property
    def closed(self) -> bool:
        return self.state in CLOSED


CLOSED = (AlertState.CLEARED.value, AlertState.CANCELLED.value, AlertState.UNACKNOWLEDGED.value)


class SavedEmergency(BaseModel):
    """The open emergency as the alerts database keeps it; anything else found there is moved aside."""

    model_config = ConfigDict(extra="forbid")

    alert_id: str = Field(min_length=1, max_length=64)
    trigger: str = Field(min_length=1, max_length=64)
    raised_at: AwareDatetime
    state: Literal["raised", "delivered", "acknowledged"]
    covert: bool = False
    attempt: int = Field(default=0, ge=0)
    test: Literal[False] = False  # kept by the previous version, with the two below; ignored
    pending: list[int] = []
    last_published: float = 0.0

    @classmethod
    def of(cls, alert: OpenAlert) -> str:
        return json.dumps({"alert_id": alert.alert_id, "trigger": alert.trigger, "raised_at": alert.raised_at,
                           "state": alert.state, "covert": alert.covert, "attempt": alert.attempt})


class Alerts:
    def __init__(self, cfg: AgentConfig, sender: Sender, positioning: Positioning, reporting: Reporting,
                 feedback: Feedback, faults: Faults | None = None) -> None:
        self._panic: PanicConfig = cfg.panic
        self._covert = cfg.outputs.covert
        self._sender = sender
        self._faults = faults
        self._positioning = positioning
        self._reporting = reporting
        self.feedback = feedback
        self.emergency: OpenAlert | None = None
        self.tests: dict[str, tuple[OpenAlert, ControlRequest | None]] = {}
        self._show_due = False  # the LED follows at the next tick: the alert goes out first
        self._restore()

    # --- persistence ------------------------------------------------------------

    def _restore(self) -> None:
        outbox = self._sender.outbox
        saved = outbox.get_state(STATE_KEY)
        if saved is None:
            return
        try:
            valid = SavedEmergency.model_validate_json(saved)
        except ValidationError as exc:
            first = exc.errors()[0]
            why = f"{'.'.join(map(str, first['loc'])) or 'the record'}: {first['msg']}"[:160]
            aside = outbox.move_state_aside(STATE_KEY)
            log.error("the saved emergency does not validate (%s): moved aside to %s", why, aside)
            if self._faults is not None:
                self._faults.raise_("emergency_unreadable", f"the saved emergency does not validate ({why}); "
                                    f"moved aside to {aside} in the alerts database; no emergency restored")
            return
        # no monotonic moment of another boot is restored: it would mean nothing in this one
        self.emergency = OpenAlert(valid.alert_id, valid.trigger, valid.raised_at.isoformat(), state=valid.state,
                                   covert=valid.covert, attempt=valid.attempt, last_published=float("-inf"))
        log.warning("emergency %s still open after restart (%s)", self.emergency.alert_id, self.emergency.state)
        self._reporting.emergency(self.emergency.alert_id)
        self._show()

    def _state(self, alert: OpenAlert) -> tuple[str, str | None] | None:
        """The emergency's state change to persist with ``alert``'s next message (None for a test)."""
        if alert.test:
            return None
        return (STATE_KEY, None if alert.closed else SavedEmergency.of(alert))

    # --- raising and publishing ---------------------------------------------------

    @property
    def emergency_id(self) -> str | None:
        return None if self.emergency is None else self.emergency.alert_id

    def raise_alert(self, trigger: str, *, test: bool = False, request: ControlRequest | None = None) -> OpenAlert:
        clock = self._sender.clock
        if not test and self.emergency is not None:
            log.warning("panic %s pressed again during alert %s", trigger, self.emergency.alert_id)
            if clock.monotonic() - self.emergency.last_published >= 2.0:
                self.publish(self.emergency, note=f"{trigger} pressed again")
            return self.emergency
        when, _ = clock.now()
        alert = OpenAlert(str(uuid.uuid4()), trigger, when.isoformat(), test=test, covert=self._covert,
                          raised_mono=clock.monotonic())
        if test:
            self.tests[alert.alert_id] = (alert, request)
        else:
            self.emergency = alert
            self._reporting.emergency(alert.alert_id)
        log.warning("%s raised by %s: %s", "test alarm" if test else "PANIC ALERT", trigger, alert.alert_id)
        self.publish(alert, state=self._state(alert))  # the alert and the emergency: fsynced, in one step
        if request is not None:
            boot, seq = split(alert.pending[-1])
            request.send({"stage": "accepted", "alert_id": alert.alert_id, "boot": boot, "seq": seq,
                          "on_disk": self._sender.outbox.alerts.on_disk(alert.pending[-1])})  # False: card refused
        self._show_due = True  # after the core has handed the alert to the uplink (a blink starts a thread)
        return alert

    def publish(self, alert: OpenAlert, note: str | None = None, *,
                state: tuple[str, str | None] | None = None) -> None:
        """Publish the alert as it stands; ``state``: the emergency's change, made durable with it."""
        alert.attempt += 1
        alert.last_published = self._sender.clock.monotonic()
        message = Alert(
            **self._sender.envelope(), alert_id=alert.alert_id, state=AlertState(alert.state),
            trigger=alert.trigger, raised_at=datetime.fromisoformat(alert.raised_at), test=alert.test,
            covert=alert.covert, position=self.best_position(), attempt=alert.attempt, note=note,
        )
        alert.pending.append(self._sender.send(message, Priority.ALERT, state=state))

    def best_position(self) -> BestPosition:
        """The live fix, else the last known position with its age (an alert in a tunnel still says
        where the car was, and how long ago)."""
        where = self._positioning
        now = self._sender.clock.monotonic()
        live = where.live(now)
        if live is not None and where.last_fix_at is not None:
            return BestPosition(source=PositionSource.LIVE, age_s=round(now - where.last_fix_at, 1),
                                fix=position_of(live))
        known = where.last_known(now)
        if known is None:
            return BestPosition(source=PositionSource.NONE)
        return BestPosition(source=PositionSource.LAST_KNOWN, age_s=known.age_s, fix=known.fix)

    def _alerts(self) -> list[OpenAlert]:
        found = [a for a, _ in self.tests.values()]
        return found + ([self.emergency] if self.emergency else [])

    def _show(self) -> None:
        self._show_due = False
        shown = self.emergency or next(iter(a for a, _ in self.tests.values()), None)
        self.feedback.show("idle" if shown is None or shown.closed else shown.state)

    # --- the broker and dispatch ------------------------------------------------------

    def _delivered(self, acks: tuple[tuple[int, str | None], ...]) -> None:
        for row_id, refused in acks:
            for alert in self._alerts():
                if row_id not in alert.pending:
                    continue
                alert.pending.remove(row_id)
                if refused is None and alert.state == AlertState.RAISED.value:
                    alert.state = AlertState.DELIVERED.value
                    log.info("alert %s delivered to the broker", alert.alert_id)
                    if not alert.test:
                        self._sender.outbox.put_state(STATE_KEY, SavedEmergency.of(alert))
                    self._stage(alert, "delivered")
                    self._show()

    def known(self, alert_id: str) -> bool:
        return any(a.alert_id == alert_id for a in self._alerts())

    def from_dispatch(self, payload: bytes) -> str | None:
        """An acknowledgement or clear from dispatch; None when taken, else why it was not."""
        try:
            ack = AlertAck.model_validate_json(payload)
        except ValidationError as exc:
            first = exc.errors()[0]
            return f"{'.'.join(map(str, first['loc'])) or 'payload'}: {first['msg']}"[:200]
        return self.dispatch_action(ack.alert_id, ack.action, ack.operator)

    def dispatch_action(self, alert_id: str, action: str, operator: str | None) -> str | None:
        alert = next((a for a in self._alerts() if a.alert_id == alert_id), None)
        if alert is None:
            return f"no open alert {alert_id}"
        who = operator or "dispatch"
        if action == "acknowledge":
            if alert.state in OPEN:
                alert.state = AlertState.ACKNOWLEDGED.value
                log.warning("alert %s acknowledged by dispatch", alert.alert_id)
                self.publish(alert, note=f"acknowledged by {who}", state=self._state(alert))
                self._stage(alert, "acknowledged", operator=operator)
        else:
            alert.state = AlertState.CLEARED.value
            log.warning("alert %s cleared by dispatch", alert.alert_id)
            self.publish(alert, note=f"cleared by {who}", state=self._state(alert))  # the end, on disk first
            self._stage(alert, "cleared", operator=operator)
            self._close(alert)
        self._show()
        return None

    def _stage(self, alert: OpenAlert, stage: str, **extra: object) -> None:
        if not alert.test or alert.alert_id not in self.tests:
            return
        _, request = self.tests[alert.alert_id]
        if request is not None:
            request.send({"stage": stage, "alert_id": alert.alert_id, **extra})
        if stage in ("acknowledged", "cleared", "stopped", "unacknowledged"):
            if request is not None:
                request.finish()
            self.tests.pop(alert.alert_id, None)

    def _close(self, alert: OpenAlert) -> None:
        if self.emergency is alert:
            self.emergency = None
            self._reporting.emergency(None)
        self.tests.pop(alert.alert_id, None)

    def cancel(self, by: str) -> None:
        """The officer's cancel gesture: the emergency ends, reported as cancelled."""
        alert = self.emergency
        if alert is None:
            return
        alert.state = AlertState.CANCELLED.value
        log.warning("alert %s cancelled by the officer (%s)", alert.alert_id, by)
        self.publish(alert, note=f"cancelled by the officer at the {by} button", state=self._state(alert))
        self._close(alert)
        self._show()

    # --- the component -----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        match event:
            case Acked(acks=acks):
                self._delivered(acks)
            case ControlRequest(cmd="panic_test"):
                self.raise_alert("test", test=True, request=event)
            case ControlRequest(cmd="alert"):
                event.finish({"ok": True, "emergency": None if self.emergency is None else asdict(self.emergency),
                              "feedback": self.feedback.state})
            case ConfigApplied(cfg=cfg):
                self._panic = cfg.panic
            case _:
                pass

    def tick(self, now: float) -> None:
        if self._show_due:
            self._show()
        for alert_id, (alert, request) in list(self.tests.items()):
            if request is not None and request.closed.is_set():  # the technician's tool gave up
                alert.state = AlertState.CANCELLED.value
                self.publish(alert, note="test stopped by the technician")
                self.tests.pop(alert_id, None)
                self._show()
            elif alert.state in OPEN and now - alert.raised_mono >= self._panic.test_timeout_s:
                alert.state = AlertState.UNACKNOWLEDGED.value
                log.warning("test alarm %s not acknowledged within %g s: ended", alert_id, self._panic.test_timeout_s)
                self.publish(alert, note=f"test alarm not acknowledged within {self._panic.test_timeout_s:g} s")
                self._stage(alert, "unacknowledged")
                self.tests.pop(alert_id, None)
                self._show()
        for alert in self._alerts():
            due = now - alert.last_published >= self._panic.republish_s
            if due and not alert.pending and alert.state in OPEN:
                self.publish(alert, note="not yet acknowledged")
