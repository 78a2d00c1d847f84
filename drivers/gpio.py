"""GPIO: the officers' buttons and the car's digital inputs in, feedback LED and buzzer out.

gpiozero devices, with the pin factory injected (``MockFactory`` in tests and
simulation). Input callbacks run on gpiozero's own threads: they only put an
:class:`Edge` on the core's queue, stamped with the monotonic clock, and
return. Debouncing is the agent's, not gpiozero's (MockPin ignores
``bounce_time``, so only our own can be tested): see :class:`Debouncer`,
driven by the core thread.

Feedback patterns (:class:`Feedback`): raised but not yet delivered: fast
blink and short beeps; delivered to the broker: slow blink; acknowledged by
dispatch: steady light, one long beep; idle: dark and silent. In covert mode
no output device is even created: the pins are never touched.

The pin factory is chosen once, at start, by :func:`select_factory` from
``gpio.pin_factory`` (``mock`` whenever ``simulation`` is on): ``lgpio`` is
the one that works on every current Raspberry Pi (the Pi 5 and kernel 6.6
included); ``auto`` takes lgpio where it can be opened and otherwise falls
back to gpiozero's native factory, *reported* as a fallback (its edge
detection is broken on the Pi 5 and kernel 6.6, gpiozero issues 1131 and
1136), so that the daemon raises a fault and doctor fails.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.config import InputPinConfig, OutputPinConfig, OutputsConfig

FACTORIES = {
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory"),
    "native": ("gpiozero.pins.native", "NativeFactory"),
    "mock": ("gpiozero.pins.mock", "MockFactory"),
}
AUTO_FALLBACK = "native"


@dataclass
class FactoryChoice:
    """The pin factory in use and how it was chosen. ``factory`` is None when none could be made."""

    factory: Any
    name: str
    is_fallback: bool
    problems: list[str] = field(default_factory=list)
    requested: str = "auto"

    @property
    def usable(self) -> bool:
        return self.factory is not None

    def as_dict(self) -> dict[str, Any]:
        """For the daemon's status and health: ``{"factory", "requested", "is_fallback", "problems"}``."""
        return {"factory": self.name if self.factory is not None else None, "requested": self.requested,
                "is_fallback": self.is_fallback, "problems": list(self.problems)}


def load_factory(name: str) -> Any:
    """gpiozero's factory ``name``, constructed (raises what the library raises: no module, no chip...)."""
    module, cls = FACTORIES[name]
    factory = getattr(importlib.import_module(module), cls)()
    if name == "lgpio" and not os.access(os.getcwd(), os.W_OK):
        factory.close()
        raise OSError(f"the working directory {os.getcwd()} is not writable: lgpio makes its notification pipes "
                      "there (gpiozero issue 1106); the unit sets WorkingDirectory=/run/patrol-agent")
    return factory


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + " [...]"


def select_factory(setting: str, *, simulation: bool,
                   load: Callable[[str], Any] = load_factory) -> FactoryChoice:
    """The pin factory for ``gpio.pin_factory``; never raises: what went wrong is in ``problems``."""
    if simulation:
        return FactoryChoice(load("mock"), "mock", False, [], requested=setting)
    if setting != "auto":
        try:
            return FactoryChoice(load(setting), setting, False, [], requested=setting)
        except Exception as exc:  # gpiozero and the libraries raise many kinds
            return FactoryChoice(None, setting, False, [f"{setting}: {_why(exc)}"], requested=setting)
    problems = []
    try:
        return FactoryChoice(load("lgpio"), "lgpio", False, [], requested=setting)
    except Exception as exc:
        problems.append(f"lgpio: {_why(exc)}")
    try:
        factory = load(AUTO_FALLBACK)
    except Exception as exc:
        problems.append(f"{AUTO_FALLBACK}: {_why(exc)}")
        return FactoryChoice(None, "none", True, problems, requested=setting)
    problems.append(f"fell back to gpiozero's {AUTO_FALLBACK} factory: its edge detection is unreliable "
                    "(broken on the Pi 5 and kernel 6.6)")
    return FactoryChoice(factory, AUTO_FALLBACK, True, problems, requested=setting)


def read_level(cfg: InputPinConfig, factory: Any) -> bool:
    """Open one input through ``factory``, read whether it is active, close it (doctor)."""
    pull_up: bool | None = {"up": True, "down": False, "none": None}[cfg.pull]
    from gpiozero import DigitalInputDevice

    device = DigitalInputDevice(cfg.pin, pull_up=pull_up, active_state=None if pull_up is not None
                                else cfg.active_high, pin_factory=factory)
    try:
        return bool(device.is_active)
    finally:
        device.close()


@dataclass(frozen=True, slots=True)
class Edge:
    name: str
    active: bool
    at: float  # monotonic


class InputPin:
    """One digital input; reports raw edges (no debounce here)."""

    def __init__(self, cfg: InputPinConfig, *, on_edge: Callable[[Edge], None], pin_factory: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from gpiozero import DigitalInputDevice

        pull_up: bool | None = {"up": True, "down": False, "none": None}[cfg.pull]
        active_state = None if pull_up is not None else cfg.active_high
        self.cfg = cfg
        self.device = DigitalInputDevice(cfg.pin, pull_up=pull_up, active_state=active_state,
                                         bounce_time=None, pin_factory=pin_factory)
        self.device.when_activated = lambda: on_edge(Edge(cfg.name, True, clock()))
        self.device.when_deactivated = lambda: on_edge(Edge(cfg.name, False, clock()))

    @property
    def active(self) -> bool:
        return bool(self.device.is_active)

    def close(self) -> None:
        self.device.close()


class Debouncer:
    """Leading-edge debounce: the first edge counts at once, then a lockout.

    Contact bounce is a burst of edges within a few ms of the first; taking
    the first edge and ignoring the rest for ``debounce_ms`` gives one press
    per press with no added latency. A level reached inside the lockout is
    not lost: it is adopted when the lockout ends (:meth:`settle`) or when the
    next edge comes, whichever is first, so a quick release and press again
    are both seen.
    """

    def __init__(self, debounce_ms: int, initial: bool) -> None:
        self.window = debounce_ms / 1000
        self.state = initial
        self._raw = initial
        self._raw_at = float("-inf")
        self._locked_until = float("-inf")

    def edge(self, active: bool, at: float) -> list[tuple[bool, float]]:
        """A raw edge; the debounced changes it completes, as (state, when)."""
        changes = self._adopt(at)
        self._raw, self._raw_at = active, at
        if at >= self._locked_until and active != self.state:
            self.state = active
            self._locked_until = at + self.window
            changes.append((active, at))
        return changes

    def settle(self, now: float, level: bool | None = None) -> list[tuple[bool, float]]:
        """After the lockout, adopt the level the input settled at."""
        if level is not None and level != self._raw and now >= self._locked_until:
            self._raw, self._raw_at = level, now
        return self._adopt(now)

    def _adopt(self, now: float) -> list[tuple[bool, float]]:
        if now < self._locked_until or self._raw == self.state:
            return []
        self.state = self._raw
        when = max(self._raw_at, self._locked_until)
        self._locked_until = self._raw_at + self.window  # its bounce followed the raw edge, not this moment
        return [(self.state, when)]


class Feedback:
    """The officer's LED and buzzer."""

    PATTERNS: ClassVar[dict[str, tuple[Any, Any]]] = {
        "idle": (None, None),
        "raised": ((0.1, 0.1), (0.05, 0.45)),
        "delivered": ((0.5, 0.5), None),
        "acknowledged": ("on", (1.0, 0.0)),
    }

    def __init__(self, cfg: OutputsConfig, *, pin_factory: Any = None) -> None:
        self.covert = cfg.covert
        self.state = "idle"
        self.led = None if cfg.covert else _output(cfg.led, pin_factory, buzzer=False)
        self.buzzer = None if cfg.covert else _output(cfg.buzzer, pin_factory, buzzer=True)

    def show(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        if self.covert:
            return
        led_pattern, buzzer_pattern = self.PATTERNS.get(state, (None, None))
        if self.led is not None:
            _drive(self.led, led_pattern, repeat=True)
        if self.buzzer is not None:
            _drive(self.buzzer, buzzer_pattern, repeat=state == "raised")

    def close(self) -> None:
        for device in (self.led, self.buzzer):
            if device is not None:
                device.close()


def _output(cfg: OutputPinConfig | None, pin_factory: Any, *, buzzer: bool) -> Any:
    if cfg is None:
        return None
    from gpiozero import LED, Buzzer

    kind = Buzzer if buzzer else LED
    return kind(cfg.pin, active_high=cfg.active == "high", initial_value=False, pin_factory=pin_factory)


def _drive(device: Any, pattern: Any, *, repeat: bool) -> None:
    if pattern is None:
        device.off()
    elif pattern == "on":
        device.on()
    else:
        on_time, off_time = pattern
        device.blink(on_time=on_time, off_time=off_time, n=None if repeat else 1, background=True)
