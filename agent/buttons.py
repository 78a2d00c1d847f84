"""Buttons and digital inputs: raw GPIO edges to what the officer meant.

A component on the core thread. Edges come from gpiozero's threads as
:class:`~drivers.gpio.Edge` events; each input is debounced here
(:class:`~drivers.gpio.Debouncer`), then:

- a panic button raises an alert on press (``trigger: press``) or once held
  ``hold_s`` (``trigger: hold``); a button active at boot counts as a press
  that starts then, so it raises at most one alert; one held for
  ``stuck_after_s`` is a ``stuck_input:<name>`` fault, cleared on release;
- ``inputs.cancel.presses`` short presses within ``within_s`` (not in the
  first ``not_before_s`` of an alert) cancel the emergency;
- a digital input is reported as an ``input`` event; the ignition also
  sends a position (``ignition_on`` / ``ignition_off``).

In simulation the control socket's ``sim_press`` / ``sim_release`` drive
the mock pins, exactly as a finger would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.alerts import Alerts
from agent.config import CancelConfig, DigitalInputConfig, InputsConfig, PanicButtonConfig
from agent.control import ControlRequest
from agent.events import ConfigApplied, Event
from agent.reporting import Reporting
from agent.unit import Faults, Sender
from drivers.gpio import Debouncer, Edge, InputPin


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


class Buttons:
    def __init__(self, cfg: InputsConfig, *, pins: dict[str, InputPin], alerts: Alerts, reporting: Reporting,
                 sender: Sender, faults: Faults, now: float, pin_factory: Any = None) -> None:
        self._cancel: CancelConfig = cfg.cancel
        self._pins = pins
        self._alerts = alerts
        self._reporting = reporting
        self._sender = sender
        self._faults = faults
        self._pin_factory = pin_factory
        self.buttons: dict[str, Button] = {}
        items: list[PanicButtonConfig | DigitalInputConfig] = [*cfg.panic_buttons, *cfg.digital]
        for item in items:
            level = pins[item.name].active if item.name in pins else False
            button = Button(item, Debouncer(item.debounce_ms, level))
            if level:
                button.pressed_at = now  # active at boot: a press that started now, at most one alert
            self.buttons[item.name] = button

    def inputs(self) -> dict[str, bool]:
        return {name: button.debounce.state for name, button in self.buttons.items()}

    # --- the component -----------------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        match event:
            case Edge(name=name, active=active, at=at):
                button = self.buttons.get(name)
                if button is not None:
                    for level, when in button.debounce.edge(active, at):
                        self._changed(button, level, when)
            case ControlRequest(cmd="sim_press" | "sim_release"):
                self._simulate(event, now)
            case ConfigApplied(cfg=cfg):
                self._cancel = cfg.inputs.cancel
            case _:
                pass

    def tick(self, now: float) -> None:
        for name, button in self.buttons.items():
            if button.release_at is not None and now >= button.release_at:
                button.release_at = None
                self._drive(name, False)
            level = self._pins[name].active if name in self._pins else None
            for active, at in button.debounce.settle(now, level):
                self._changed(button, active, at)
            if button.panic and button.pressed_at is not None:
                self._held(button, now)

    # --- what an edge means ----------------------------------------------------------------

    def _changed(self, button: Button, active: bool, at: float) -> None:
        cfg = button.cfg
        if not isinstance(cfg, PanicButtonConfig):
            self._sender.event("input", cfg.name, active=active)
            if cfg.kind == "ignition":
                self._reporting.report("ignition_on" if active else "ignition_off")
            return
        if active:
            button.pressed_at, button.alerted = at, False
            if cfg.trigger == "press":
                self._press_raises(button)
            return
        held = at - (button.pressed_at or at)
        button.pressed_at = None
        if button.stuck:
            button.stuck = False
            self._faults.clear(f"stuck_input:{cfg.name}")
        if held < self._cancel.short_s:
            self._short_press(button, at)

    def _press_raises(self, button: Button) -> None:
        button.alerted = True
        self._alerts.raise_alert(button.cfg.name)

    def _short_press(self, button: Button, at: float) -> None:
        rule = self._cancel
        alert = self._alerts.emergency
        if alert is None or at - alert.raised_mono < rule.not_before_s:
            button.short_presses.clear()
            return
        button.short_presses = [t for t in button.short_presses if at - t <= rule.within_s] + [at]
        if len(button.short_presses) >= rule.presses:
            button.short_presses.clear()
            self._alerts.cancel(button.cfg.name)

    def _held(self, button: Button, now: float) -> None:
        cfg = button.cfg
        assert isinstance(cfg, PanicButtonConfig)
        held = now - (button.pressed_at or now)
        # a press-trigger button raises on its edge; one already active at boot has none: raise here
        if not button.alerted and (cfg.trigger == "press" or held >= cfg.hold_s):
            self._press_raises(button)
        if not button.stuck and held >= cfg.stuck_after_s:
            button.stuck = True
            self._faults.raise_(f"stuck_input:{cfg.name}", f"panic button {cfg.name} active for {held:.0f} s")

    # --- simulation ----------------------------------------------------------------------

    def _simulate(self, req: ControlRequest, now: float) -> None:
        name = str(req.args.get("name", ""))
        press = req.cmd == "sim_press"
        if not self._drive(name, press):
            req.finish({"ok": False, "error": f"no simulated input {name!r}"})
            return
        hold = req.args.get("hold")
        if press and isinstance(hold, int | float) and hold >= 0:
            self.buttons[name].release_at = now + float(hold)
        req.finish({"ok": True})

    def _drive(self, name: str, active: bool) -> bool:
        """Drive a simulated input's mock pin to its active or idle level."""
        pin_input = self._pins.get(name)
        if pin_input is None or self._pin_factory is None or not hasattr(self._pin_factory, "pin"):
            return False
        pin = self._pin_factory.pin(pin_input.cfg.pin)
        if not hasattr(pin, "drive_high"):
            return False
        high = active == pin_input.cfg.active_high
        pin.drive_high() if high else pin.drive_low()
        return True
