"""The daemon: wires the unit's parts together and runs the core loop.

Main thread: start-up, signals and the core loop. Sinks start before
sources (outbox, core state, uplink, control socket, then GPIO and GNSS)
and stop in reverse: drivers first, then the outbox is flushed and the
offline status published. Every thread is started by the supervisor.
"""

from __future__ import annotations

import faulthandler
import logging
import queue
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from agent import logs, security, statedir
from agent.alerts import Alerts
from agent.buttons import Buttons
from agent.clock import Clock
from agent.config import AgentConfig, load
from agent.control import ControlServer
from agent.core import Core
from agent.errors import ConfigError
from agent.events import (
    Call,
    ConfigApplied,
    Event,
    FaultCleared,
    FaultRaised,
    FixReceived,
    GnssStateChanged,
    Reload,
    Stop,
)
from agent.forwarder import Forwarder
from agent.health import Health, status_message
from agent.inbox import Inbox
from agent.notify import Notifier
from agent.outbox import Outbox
from agent.positioning import Positioning
from agent.remote import RemoteCommands
from agent.reporting import Reporting
from agent.rows import RowCheck
from agent.supervisor import Supervisor
from agent.topics import Topics
from agent.unit import Faults, Sender
from agent.uplink import Uplink
from drivers.gnss.reader import GnssReader
from drivers.gpio import FactoryChoice, Feedback, InputPin, select_factory

log = logging.getLogger("agent")

#: config sections a SIGHUP applies at once; the others (link, receiver, pins, paths) need a restart
LIVE_SECTIONS = frozenset({"reporting", "health", "panic", "log_level", "inputs"})
UPLINK_STALE_S = 30.0  # a blocking connect (TCP + TLS) may take connect_timeout_s


def main(config_path: Path) -> int:
    checked = security.check(config_path, as_service=True)  # the same check as `config check` and doctor
    if checked.problems or checked.cfg is None:
        for problem in checked.problems:
            print(f"refusing to start: {problem}", file=sys.stderr)
        print("(the same check: patrol-agent config check; for a lab set-up only: mqtt.lab_mode: true)",
              file=sys.stderr)
        return 2
    cfg: AgentConfig = checked.cfg
    logs.setup(cfg.log_level)
    for override in checked.overrides:  # by key, never by value
        log.info("config: %s", override)
    for warning in checked.warnings:
        log.warning("%s", warning)
    return run(cfg, config_path)


class Agent:
    """The whole unit, wired: ``start()``, then ``run()`` (the core loop) until stopped, then ``shutdown()``.

    Hardware seams are keyword arguments that default to the real thing
    (``pin_factory``: gpiozero's default, or mock pins in simulation).
    """

    def __init__(self, cfg: AgentConfig, *, pin_factory: Any = None, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.inbox: queue.Queue[Event] = Inbox()
        self.clock = Clock()
        self.notifier = Notifier()
        self.supervisor = Supervisor(self.inbox.put)
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.vehicle.id)
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox, clock=self.clock,
                             on_fault=lambda c, d: self.inbox.put(FaultRaised(c, d)),
                             on_clear=lambda c: self.inbox.put(FaultCleared(c)), check=RowCheck(self.topics))
        self.reader = GnssReader(
            cfg.gnss, on_fix=lambda fix: self.inbox.put(FixReceived(fix, time.monotonic())),
            on_state=lambda state, detail: self.inbox.put(GnssStateChanged(state, detail)))
        self.control = ControlServer(cfg.runtime_dir, self.inbox.put)
        if pin_factory is None:
            self.gpio = select_factory(cfg.gpio.pin_factory, simulation=cfg.simulation)
            pin_factory = self.gpio.factory
        else:
            self.gpio = FactoryChoice(pin_factory, type(pin_factory).__name__, False, [], requested="injected")
        self.pin_factory = pin_factory
        self.pins: dict[str, InputPin] = {}
        self.feedback: Feedback | None = None
        self.uplink: Uplink | None = None
        self.core: Core | None = None
        self.sender: Sender | None = None
        self.alerts: Alerts | None = None
        self.faults: Faults | None = None
        self.forwarder: Forwarder | None = None
        self.positioning: Positioning | None = None
        self._gpio_problem: dict[str, str] = {}

    # --- wiring ---------------------------------------------------------------------

    def _wire(self) -> Core:
        """The components, each given what it needs (the outbox must be open: alerts restore from it)."""
        cfg, clock = self.cfg, self.clock
        sender = self.sender = Sender(cfg.vehicle.id, self.topics, self.outbox, clock)
        faults = self.faults = Faults(sender)
        for code, detail in self._gpio_problem.items():
            faults.raise_(code, detail)
        if cfg.simulation:
            faults.raise_("simulation", "simulated hardware: GPIO on mock pins, the real panic buttons are OFF")
        will = (self.topics.status, status_message(sender, cfg, "offline", "connection lost"))
        identity = cfg.mqtt.client_id or cfg.vehicle.id  # the certificate's CN, as the reference broker binds it
        self.uplink = Uplink(cfg.mqtt, client_id=identity,
                             subscriptions=[self.topics.command, self.topics.alert_ack], will=will,
                             post=self.inbox.put, versions=cfg.state_dir / "mqtt-versions.json")
        forwarder = self.forwarder = Forwarder(cfg.mqtt, self.outbox, self.uplink, clock,
                              online_status=lambda generation: (self.topics.status, status_message(
                                  sender, cfg, "online", connection=generation)),
                              faults=faults)
        positioning = self.positioning = Positioning(cfg.gnss, clock, faults)
        reporting = Reporting(cfg.reporting, sender, positioning)
        assert self.feedback is not None
        alerts = self.alerts = Alerts(cfg, sender, positioning, reporting, self.feedback, faults)
        buttons = Buttons(cfg.inputs, pins=self.pins, alerts=alerts, reporting=reporting, sender=sender,
                          faults=faults, now=clock.monotonic(), pin_factory=self.pin_factory)
        remote = RemoteCommands(cfg.vehicle.id, self.topics, sender, reporting, alerts, self.inbox.put)
        health = Health(cfg, sender=sender, faults=faults, positioning=positioning, forwarder=forwarder,
                        alerts=alerts, buttons=buttons, supervisor=self.supervisor, notifier=self.notifier,
                        gnss_counters=self.reader.counters, started=clock.monotonic(), gpio=self.gpio.as_dict())
        return Core(inbox=self.inbox, clock=clock, components=[positioning, reporting, alerts, buttons, remote,
                                                               forwarder, health],
                    forwarder=forwarder, faults=faults, supervisor=self.supervisor, notifier=self.notifier,
                    reload=self.reload, simulation=cfg.simulation)

    def start(self) -> None:
        """Sinks before sources: outbox, core state, uplink, control socket, GPIO, GNSS."""
        self.outbox.open()
        self._gpio_problem = gpio_problems(self.cfg, self.gpio)
        if self.pin_factory is None:
            self.pins, self.feedback = {}, Feedback(self.cfg.outputs.model_copy(update={"led": None, "buzzer": None}))
        else:
            self.pins, self.feedback = open_gpio(self.cfg, self.inbox, self.pin_factory, self._gpio_problem)
        self.core = self._wire()
        assert self.uplink is not None
        spawn = self.supervisor.spawn
        spawn("outbox-checkpoint", self.outbox.run_checkpoints, stale_after_s=60.0)
        spawn("uplink", self.uplink.run, stale_after_s=max(UPLINK_STALE_S, self.cfg.mqtt.connect_timeout_s + 10))
        self.control.open()
        spawn("control", self.control.run)
        spawn("gnss-reader", self.reader.run)
        log.info("patrol-agent started: vehicle %s, %d messages waiting", self.cfg.vehicle.id, self.outbox.depth)
        if self.cfg.mqtt.lab_mode:
            log.warning("LAB MODE: the link to the broker is not protected as the fleet requires")
        if self.cfg.simulation:
            log.warning("SIMULATION: GPIO on mock pins, the real panic buttons are OFF")
        for code, detail in self._gpio_problem.items():
            log.error("%s: %s", code, detail)
        self.notifier.ready(f"started, {self.outbox.depth} messages waiting")

    def reload(self) -> ConfigApplied | None:
        """SIGHUP: re-read the config; apply what can change live, report the rest."""
        assert self.sender is not None
        if self.config_path is None:
            return None
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", "; ".join(exc.problems))
            self.sender.event("config_reloaded", "refused", active=False, detail="; ".join(exc.problems)[:400])
            return None
        changed = [key for key in AgentConfig.model_fields if getattr(new, key) != getattr(self.cfg, key)]
        live = [key for key in changed if key in LIVE_SECTIONS and (key != "inputs" or _same_pins(new, self.cfg))]
        later = [key for key in changed if key not in live]
        self.cfg = self.cfg.model_copy(update={key: getattr(new, key) for key in live})
        if "log_level" in live:
            logging.getLogger().setLevel(self.cfg.log_level)
        detail = f"applied: {', '.join(live) or 'nothing'}; needs a restart: {', '.join(later) or 'nothing'}"
        log.info("config reloaded: %s", detail)
        self.sender.event("config_reloaded", "config", active=True, detail=detail)
        return ConfigApplied(self.cfg)

    def run(self) -> None:
        assert self.core is not None
        self.core.run()

    def stop(self) -> None:
        self.inbox.put(Stop())

    def on_core(self, fn: Any, timeout: float = 5.0) -> Any:
        """Run ``fn()`` on the core thread and return its result (tests and benchmarks)."""
        call = Call(fn)
        self.inbox.put(call)
        ok, value = call.result.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def shutdown(self) -> None:
        """Sources first; then flush the outbox and say offline."""
        self.notifier.stopping()
        self.supervisor.stop()
        self.reader.stop()
        self.control.stop()
        for pin in self.pins.values():
            pin.close()
        if self.feedback is not None:
            self.feedback.close()
        self.outbox.flush()
        if self.uplink is not None and self.sender is not None:
            self.uplink.request_stop((self.topics.status, status_message(self.sender, self.cfg, "offline",
                                                                          "shutdown")))
        self.outbox.close()
        self.supervisor.join(4.0)
        self.control.close()
        if self.uplink is not None:
            self.uplink.close()
        log.info("patrol-agent stopped")


def _same_pins(new: AgentConfig, old: AgentConfig) -> bool:
    """Input timings apply live; which pins exist (and their wiring) needs a restart."""
    def wiring(cfg: AgentConfig) -> list[tuple[str, int, str, str | None]]:
        return [(i.name, i.pin, i.pull, i.active) for i in (*cfg.inputs.panic_buttons, *cfg.inputs.digital)]
    return wiring(new) == wiring(old)


def gpio_problems(cfg: AgentConfig, choice: FactoryChoice) -> dict[str, str]:
    """A fallback pin factory, or none at all while inputs are configured: loud faults."""
    problems: dict[str, str] = {}
    inputs = len(cfg.inputs.panic_buttons) + len(cfg.inputs.digital)
    if choice.factory is None and (inputs or cfg.outputs.led or cfg.outputs.buzzer):
        problems["gpio_unavailable"] = f"no GPIO pin factory ({'; '.join(choice.problems)}): PANIC BUTTONS OFF"
    elif choice.is_fallback:
        problems["gpio_fallback"] = f"GPIO on gpiozero's {choice.name} factory: {'; '.join(choice.problems)}"
    return problems


def open_gpio(cfg: AgentConfig, inbox: queue.Queue[Event], factory: Any,
              problem: dict[str, str]) -> tuple[dict[str, InputPin], Feedback]:
    """Inputs and outputs. No GPIO is a fault, not a crash: GNSS and the link still work."""
    pins: dict[str, InputPin] = {}
    try:
        for item in (*cfg.inputs.panic_buttons, *cfg.inputs.digital):
            pins[item.name] = InputPin(item, on_edge=inbox.put, pin_factory=factory)
        feedback = Feedback(cfg.outputs, pin_factory=factory)
    except Exception as exc:  # gpiozero raises many kinds: no chip, pin in use, no permission
        log.error("GPIO unavailable: %s", exc)
        problem["gpio_unavailable"] = str(exc)[:200]
        feedback = Feedback(cfg.outputs.model_copy(update={"led": None, "buzzer": None}))
    return pins, feedback


def run(cfg: AgentConfig, config_path: Path | None = None) -> int:
    for directory in dict.fromkeys((cfg.state_dir, cfg.outbox_path.parent)):
        problem = statedir.dir_problem(directory)  # the outbox's files are kept only in a dir of our own
        if problem:
            print(f"refusing to start: {problem}", file=sys.stderr)
            return 2
    agent = Agent(cfg, config_path=config_path)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop()

    faulthandler.enable()  # a crash in C code (SQLite, ssl) leaves every thread's traceback in the journal
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: agent.inbox.put(Reload()))
    agent.start()
    try:
        agent.run()
    finally:
        agent.shutdown()
    return 0
