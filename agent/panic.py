"""Panic alerts: from the officer's thumb to the dispatcher's screen, and back.

Runs on the core thread (a component of :class:`agent.core.Core`: it gets
the GPIO edges, the ticks, the PUBACKs of alert rows and dispatch's
acknowledgements). The lifecycle of an alert:

    raised --(broker PUBACK)--> delivered --(dispatch ack)--> acknowledged
       \\______________________________________________________/
                |                                 |
         cleared (dispatch)            cancelled (officer's gesture)

- raised: the alert is in the outbox, fsynced, before anything else happens;
  the officer sees a fast blink. It carries the best position known.
- until dispatch acknowledges, the alert is published again every
  ``panic.republish_s`` with the same id (once the previous copy is out).
- the emergency is persisted (outbox ``state`` table, fsynced): a reboot or
  power cut does not end it. Only dispatch (clear) or the officer's cancel
  gesture (reported as ``cancelled``, never silently dropped) does.
- during an emergency positions go out every ``reporting.emergency_interval_s``
  tagged with the alert id, whatever the normal policy says.
- a button stuck active (or active at boot) raises at most one alert, and a
  ``stuck_input`` fault once it has been held for ``stuck_after_s``.

Test alarms (``patrol-agent panic test``) take the same path, flagged
``test``, without entering the emergency.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.config import AgentConfig, DigitalInputConfig, PanicButtonConfig
from agent.control import ControlRequest
from agent.messages import Alert, AlertAck, AlertState, BestPosition, PositionSource, Priority
from drivers.gpio import Debouncer, Edge, Feedback, InputPin

if TYPE_CHECKING:
    from agent.core import Core

log = logging.getLogger(__name__)

LIVE_FIX_S = 2.0  # a fix younger than this is "live" in an alert
STATE_KEY = "emergency"


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


@dataclass
class Button:
    cfg: PanicButtonConfig | DigitalInputConfig
    debounce: Debouncer
    pressed_at: float | None = None
    alerted: bool = False  # this press has raised (or renewed) an alert
    stuck: bool = False
    short_presses: list[float] = field(default_factory=list)
    release_at: float | None = None  # `sim press --hold`

    @property
    def panic(self) -> bool:
        return isinstance(self.cfg, PanicButtonConfig)


class Panic:
    def __init__(self, core: Core, cfg: AgentConfig, *, feedback: Feedback, pins: dict[str, InputPin],
                 pin_factory: Any = None) -> None:
        self.core = core
        self.cfg = cfg
        self.feedback = feedback
        self.pins = pins
        self.pin_factory = pin_factory
        now = core.clock.monotonic()
        self.buttons: dict[str, Button] = {}
        items: list[PanicButtonConfig | DigitalInputConfig] = [*cfg.inputs.panic_buttons, *cfg.inputs.digital]
        for item in items:
            level = pins[item.name].active if item.name in pins else False
            button = Button(item, Debouncer(item.debounce_ms, level))
            if level:
                button.pressed_at = now  # active at boot: a press that started now, at most one alert
            self.buttons[item.name] = button
        self.emergency: OpenAlert | None = None
        self.tests: dict[str, tuple[OpenAlert, ControlRequest | None]] = {}
        self._last_emergency_report = float("-inf")
        self._last_emergency_fix: object = None
        core.on_tick.append(self.tick)
        core.on_ack.append(self.on_row_acked)
        core.on_edge = self.on_edge
        core.on_alert_ack = self.on_dispatch
        core.emergency_id = lambda: None if self.emergency is None else self.emergency.alert_id
        for name, button in self.buttons.items():
            core.inputs[name] = button.debounce.state
        core.handlers.update(panic_test=self._control_test, sim_press=self._control_press,
                             sim_release=self._control_release, alert=self._control_alert)
        core.emergency_reporting = lambda: self.emergency is not None and not self.emergency.test  # type: ignore[method-assign]
        self._restore()

    # --- persistence ------------------------------------------------------------

    def _restore(self) -> None:
        saved = self.core.outbox.get_state(STATE_KEY)
        if saved is None:
            return
        try:
            self.emergency = OpenAlert(**json.loads(saved))
        except (ValueError, TypeError):
            log.error("the saved emergency could not be read; it is kept as it was on disk")
            return
        self.emergency.pending = []
        log.warning("emergency %s still open after restart (%s)", self.emergency.alert_id, self.emergency.state)
        self.feedback.show(self.emergency.state if self.emergency.state != "raised" else "raised")

    def _save(self) -> None:
        if self.emergency is None:
            self.core.outbox.delete_state(STATE_KEY)
        else:
            self.core.outbox.put_state(STATE_KEY, json.dumps(asdict(self.emergency)))

    # --- raising and publishing ---------------------------------------------------

    def raise_alert(self, trigger: str, *, test: bool = False, request: ControlRequest | None = None) -> OpenAlert:
        if not test and self.emergency is not None:
            log.warning("panic %s pressed again during alert %s", trigger, self.emergency.alert_id)
            if self.core.clock.monotonic() - self.emergency.last_published >= 2.0:
                self.publish(self.emergency, note=f"{trigger} pressed again")
            return self.emergency
        when, _ = self.core.clock.now()
        alert = OpenAlert(str(uuid.uuid4()), trigger, when.isoformat(), test=test, covert=self.cfg.outputs.covert)
        if test:
            self.tests[alert.alert_id] = (alert, request)
        else:
            self.emergency = alert
            self._last_emergency_report = float("-inf")
        log.warning("%s raised by %s: %s", "test alarm" if test else "PANIC ALERT", trigger, alert.alert_id)
        self.publish(alert)  # fsynced when this returns
        if not test:
            self._save()
        if request is not None:
            request.send({"stage": "accepted", "alert_id": alert.alert_id, "seq": alert.pending[-1]})
        self._show()
        return alert

    def publish(self, alert: OpenAlert, note: str | None = None) -> None:
        alert.attempt += 1
        alert.last_published = self.core.clock.monotonic()
        message = Alert(
            **self.core.envelope(), alert_id=alert.alert_id, state=AlertState(alert.state), trigger=alert.trigger,
            raised_at=datetime.fromisoformat(alert.raised_at), test=alert.test, covert=alert.covert,
            position=self.best_position(), attempt=alert.attempt, note=note,
        )
        alert.pending.append(message.seq)
        self.core.send(message, Priority.ALERT)

    def best_position(self) -> BestPosition:
        from agent.core import position_of

        fix, at = self.core.last_position_fix, self.core.last_position_at
        if fix is None or at is None:
            return BestPosition(source=PositionSource.NONE)
        age = self.core.clock.monotonic() - at
        live = age <= LIVE_FIX_S and self.core.last_fix is fix
        return BestPosition(source=PositionSource.LIVE if live else PositionSource.LAST_KNOWN,
                            age_s=round(age, 1), fix=position_of(fix))

    def _alerts(self) -> list[OpenAlert]:
        found = [a for a, _ in self.tests.values()]
        return found + ([self.emergency] if self.emergency else [])

    def _show(self) -> None:
        shown = self.emergency or next(iter(a for a, _ in self.tests.values()), None)
        self.feedback.show("idle" if shown is None else shown.state if shown.state != "cleared" else "idle")

    # --- the broker and dispatch ------------------------------------------------------

    def on_row_acked(self, row_id: int) -> None:
        for alert in self._alerts():
            if row_id in alert.pending:
                alert.pending.remove(row_id)
                if alert.state == AlertState.RAISED.value:
                    alert.state = AlertState.DELIVERED.value
                    log.info("alert %s delivered to the broker", alert.alert_id)
                    if not alert.test:
                        self._save()
                    self._stage(alert, "delivered")
                    self._show()

    def on_dispatch(self, payload: bytes) -> None:
        try:
            ack = AlertAck.model_validate_json(payload)
        except ValidationError as exc:
            self.core.event("command_rejected", "alert_ack", detail=_short(exc))
            return
        alert = next((a for a in self._alerts() if a.alert_id == ack.alert_id), None)
        if alert is None:
            self.core.event("command_rejected", "alert_ack", detail=f"no open alert {ack.alert_id}")
            return
        if ack.action == "acknowledge":
            if alert.state in (AlertState.RAISED.value, AlertState.DELIVERED.value):
                alert.state = AlertState.ACKNOWLEDGED.value
                log.warning("alert %s acknowledged by dispatch", alert.alert_id)
                self.publish(alert, note=f"acknowledged by {ack.operator or 'dispatch'}")
                self._stage(alert, "acknowledged", operator=ack.operator)
        else:
            alert.state = AlertState.CLEARED.value
            log.warning("alert %s cleared by dispatch", alert.alert_id)
            self.publish(alert, note=f"cleared by {ack.operator or 'dispatch'}")
            self._stage(alert, "cleared", operator=ack.operator)
            self._close(alert)
        if not alert.test and self.emergency is alert:
            self._save()
        self._show()

    def _stage(self, alert: OpenAlert, stage: str, **extra: Any) -> None:
        if not alert.test or alert.alert_id not in self.tests:
            return
        _, request = self.tests[alert.alert_id]
        if request is not None:
            request.send({"stage": stage, "alert_id": alert.alert_id, **extra})
            if stage in ("acknowledged", "cleared"):
                request.finish()
                self.tests[alert.alert_id] = (alert, None)
        if stage in ("acknowledged", "cleared"):
            self.tests.pop(alert.alert_id, None)

    def _close(self, alert: OpenAlert) -> None:
        if self.emergency is alert:
            self.emergency = None
        self.tests.pop(alert.alert_id, None)

    def cancel(self, by: str) -> None:
        alert = self.emergency
        if alert is None:
            return
        alert.state = AlertState.CANCELLED.value
        log.warning("alert %s cancelled by the officer (%s)", alert.alert_id, by)
        self.publish(alert, note=f"cancelled by the officer at the {by} button")
        self._close(alert)
        self._save()
        self._show()

    # --- inputs -----------------------------------------------------------------

    def on_edge(self, edge: Edge) -> None:
        button = self.buttons.get(edge.name)
        if button is not None:
            for active, at in button.debounce.edge(edge.active, edge.at):
                self._changed(button, active, at)

    def _changed(self, button: Button, active: bool, at: float) -> None:
        self.core.inputs[button.cfg.name] = active
        if not button.panic:
            self._digital(button, active)
            return
        cfg = button.cfg
        assert isinstance(cfg, PanicButtonConfig)
        if active:
            button.pressed_at, button.alerted = at, False
            if cfg.trigger == "press":
                self._press_raises(button)
            return
        held = at - (button.pressed_at or at)
        button.pressed_at = None
        if button.stuck:
            button.stuck = False
            self.core.faults.pop(f"stuck_input:{cfg.name}", None)
            self.core.event("fault_cleared", f"stuck_input:{cfg.name}", active=False)
        if held < self.cfg.inputs.cancel.short_s:
            self._short_press(button, at)

    def _press_raises(self, button: Button) -> None:
        button.alerted = True
        self.raise_alert(button.cfg.name)

    def _short_press(self, button: Button, at: float) -> None:
        rule = self.cfg.inputs.cancel
        alert = self.emergency
        if alert is None or not self._may_cancel(alert):
            button.short_presses.clear()
            return
        button.short_presses = [t for t in button.short_presses if at - t <= rule.within_s] + [at]
        if len(button.short_presses) >= rule.presses:
            button.short_presses.clear()
            self.cancel(button.cfg.name)

    def _may_cancel(self, alert: OpenAlert) -> bool:
        raised = datetime.fromisoformat(alert.raised_at)
        now_wall, _ = self.core.clock.now()
        return (now_wall - raised).total_seconds() >= self.cfg.inputs.cancel.not_before_s

    def _digital(self, button: Button, active: bool) -> None:
        cfg = button.cfg
        assert isinstance(cfg, DigitalInputConfig)
        self.core.event("input", cfg.name, active=active)
        if cfg.kind == "ignition":
            self.core.report_position("ignition_on" if active else "ignition_off", None)

    # --- time passing --------------------------------------------------------------

    def tick(self, now: float) -> None:
        for name, button in self.buttons.items():
            if button.release_at is not None and now >= button.release_at:
                button.release_at = None
                self._drive(name, False)
            level = self.pins[name].active if name in self.pins else None
            for active, at in button.debounce.settle(now, level):
                self._changed(button, active, at)
            if button.panic and button.pressed_at is not None:
                self._held(button, now)
        self._republish(now)
        self._emergency_positions(now)

    def _held(self, button: Button, now: float) -> None:
        cfg = button.cfg
        assert isinstance(cfg, PanicButtonConfig)
        held = now - (button.pressed_at or now)
        # a press-trigger button raises on its edge; one already active at boot has none: raise here
        if not button.alerted and (cfg.trigger == "press" or held >= cfg.hold_s):
            self._press_raises(button)
        if not button.stuck and held >= cfg.stuck_after_s:
            button.stuck = True
            self.core.fault(f"stuck_input:{cfg.name}", f"panic button {cfg.name} active for {held:.0f} s")

    def _republish(self, now: float) -> None:
        for alert in self._alerts():
            due = now - alert.last_published >= self.cfg.panic.republish_s
            if due and not alert.pending and alert.state in (AlertState.RAISED.value, AlertState.DELIVERED.value):
                self.publish(alert, note="not yet acknowledged")

    def _emergency_positions(self, now: float) -> None:
        alert = self.emergency
        if alert is None or alert.test:
            return
        interval = self.cfg.reporting.emergency_interval_s
        elapsed = now - self._last_emergency_report
        fresh = self.core.last_fix is not self._last_emergency_fix
        # each new fix once the interval is up; without one (no receiver), the last known anyway
        if (fresh and elapsed >= interval * 0.9) or elapsed >= interval * 1.5:
            self._last_emergency_report = now
            self._last_emergency_fix = self.core.last_fix
            self.core.report_position("emergency", None, alert_id=alert.alert_id)

    # --- control socket -------------------------------------------------------------

    def _control_test(self, req: ControlRequest) -> None:
        self.raise_alert("test", test=True, request=req)

    def _control_press(self, req: ControlRequest) -> None:
        name = str(req.args.get("name", ""))
        hold = req.args.get("hold")
        if not self._drive(name, True):
            req.finish({"ok": False, "error": f"no simulated input {name!r}"})
            return
        if isinstance(hold, int | float) and hold >= 0:
            self.buttons[name].release_at = self.core.clock.monotonic() + float(hold)
        req.finish({"ok": True})

    def _control_release(self, req: ControlRequest) -> None:
        name = str(req.args.get("name", ""))
        ok = self._drive(name, False)
        req.finish({"ok": ok} if ok else {"ok": False, "error": f"no simulated input {name!r}"})

    def _control_alert(self, req: ControlRequest) -> None:
        req.finish({"ok": True, "emergency": None if self.emergency is None else asdict(self.emergency),
                    "feedback": self.feedback.state})

    def _drive(self, name: str, active: bool) -> bool:
        """Drive a simulated input's mock pin to its active or idle level."""
        pin_input = self.pins.get(name)
        if pin_input is None or self.pin_factory is None or not hasattr(self.pin_factory, "pin"):
            return False
        pin = self.pin_factory.pin(pin_input.cfg.pin)
        if not hasattr(pin, "drive_high"):
            return False
        high = active == pin_input.cfg.active_high
        pin.drive_high() if high else pin.drive_low()
        return True


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(map(str, first['loc'])) or 'payload'}: {first['msg']}"[:200]
