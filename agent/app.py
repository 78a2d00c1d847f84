"""The daemon: wires the components together and runs the core loop.

Main thread: start-up, signals and the core loop. Sinks start before
sources (outbox, core, uplink, control socket, then GNSS) and stop in
reverse: drivers first, then the outbox is flushed and the offline status
published.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from agent import logs, security
from agent.clock import Clock
from agent.config import AgentConfig, load
from agent.control import ControlServer
from agent.core import Core
from agent.errors import ConfigError
from agent.outbox import Outbox
from agent.panic import Panic
from agent.uplink import Uplink
from drivers.gnss.reader import GnssReader
from drivers.gpio import Feedback, InputPin

log = logging.getLogger("agent")

#: config sections a SIGHUP applies at once; the others (link, receiver, pins, paths) need a restart
LIVE_SECTIONS = frozenset({"reporting", "health", "panic", "log_level"})


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
    """The whole unit, wired: ``start()``, then ``run()`` (the core loop) until "stop", then ``shutdown()``.

    Hardware seams are keyword arguments that default to the real thing
    (``pin_factory``: gpiozero's default, or mock pins in simulation).
    """

    def __init__(self, cfg: AgentConfig, *, pin_factory: Any = None, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.events: queue.Queue[Any] = queue.Queue()
        self.clock = Clock()
        self.outbox = Outbox(cfg.outbox_path, cfg.outbox, on_fault=self._outbox_fault)
        self.reader = GnssReader(cfg.gnss, on_fix=self.events.put, on_state=lambda s, d: self.events.put((s, d)))
        self.core = Core(cfg, events=self.events, outbox=self.outbox, clock=self.clock,
                         gnss_info=self.reader.counters)
        self.uplink = Uplink(
            cfg.mqtt,
            client_id=cfg.mqtt.client_id or cfg.vehicle.id,  # the identity: the certificate's CN
            subscriptions=[self.core.topics.command, self.core.topics.alert_ack],
            will=lambda: (self.core.topics.status, self.core.status_message("offline", "connection lost")),
            events=self.events,
        )
        self.core.uplink = self.uplink
        if pin_factory is None and cfg.simulation:
            from gpiozero.pins.mock import MockFactory

            pin_factory = MockFactory()
        self.pin_factory = pin_factory
        self.pins: dict[str, InputPin] = {}
        self.feedback: Feedback | None = None
        self.panic: Panic | None = None
        self.control = ControlServer(cfg.runtime_dir, self.events)
        self.core.on_reload = self.reload  # type: ignore[method-assign]

    def _outbox_fault(self, code: str, detail: str) -> None:
        self.events.put(lambda: self.core.fault(code, detail))

    def start(self) -> None:
        """Sinks before sources: outbox, core state, uplink, control socket, GPIO, GNSS."""
        self.outbox.open()
        self.pins, self.feedback = open_gpio(self.cfg, self.events, self.core, self.pin_factory)
        self.panic = Panic(self.core, self.cfg, feedback=self.feedback, pins=self.pins,
                           pin_factory=self.pin_factory)
        self.uplink.start()
        self.control.start()
        self.reader.start()
        log.info("patrol-agent started: vehicle %s, %d messages waiting", self.cfg.vehicle.id, self.outbox.depth)
        if self.cfg.mqtt.lab_mode:
            log.warning("LAB MODE: the link to the broker is not protected as the fleet requires")
        self.core.notifier.ready(self.core.status_line())

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply what can change live, report the rest."""
        if self.config_path is None:
            return
        try:
            new = load(self.config_path)
        except ConfigError as exc:
            log.error("config reload refused, keeping the running config: %s", "; ".join(exc.problems))
            self.core.event("config_reloaded", "refused", active=False, detail="; ".join(exc.problems)[:400])
            return
        changed = [key for key in AgentConfig.model_fields if getattr(new, key) != getattr(self.cfg, key)]
        applied = [key for key in changed if key in LIVE_SECTIONS]
        later = [key for key in changed if key not in LIVE_SECTIONS]
        merged = self.cfg.model_copy(update={key: getattr(new, key) for key in applied})
        self.cfg = self.core.cfg = merged
        self.core.policy.cfg = merged.reporting
        if self.panic is not None:
            self.panic.cfg = merged
        if "log_level" in applied:
            logging.getLogger().setLevel(merged.log_level)
        detail = f"applied: {', '.join(applied) or 'nothing'}; needs a restart: {', '.join(later) or 'nothing'}"
        log.info("config reloaded: %s", detail)
        self.core.event("config_reloaded", "config", active=True, detail=detail)

    def run(self) -> None:
        self.core.run()

    def stop(self) -> None:
        self.events.put("stop")

    def shutdown(self) -> None:
        """Sources first; then flush the outbox and say offline."""
        self.core.notifier.stopping()
        self.reader.stop()
        for pin in self.pins.values():
            pin.close()
        if self.feedback is not None:
            self.feedback.close()
        self.control.stop()
        self.outbox.flush()
        self.uplink.stop(last_words=(self.core.topics.status, self.core.status_message("offline", "shutdown")))
        self.outbox.close()
        log.info("patrol-agent stopped")


def open_gpio(cfg: AgentConfig, events: queue.Queue[Any], core: Core,
              factory: Any) -> tuple[dict[str, InputPin], Feedback]:
    """Inputs and outputs. No GPIO is a fault, not a crash: GNSS and the link still work."""
    pins: dict[str, InputPin] = {}
    try:
        for item in (*cfg.inputs.panic_buttons, *cfg.inputs.digital):
            pins[item.name] = InputPin(item, on_edge=events.put, pin_factory=factory)
        feedback = Feedback(cfg.outputs, pin_factory=factory)
    except Exception as exc:  # gpiozero raises many kinds: no chip, pin in use, no permission
        log.error("GPIO unavailable: %s", exc)
        core.faults["gpio_unavailable"] = str(exc)[:200]
        feedback = Feedback(cfg.outputs.model_copy(update={"led": None, "buzzer": None}))
    return pins, feedback


def run(cfg: AgentConfig, config_path: Path | None = None) -> int:
    agent = Agent(cfg, config_path=config_path)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _s, _f: agent.events.put("reload"))
    agent.start()
    try:
        agent.run()
    finally:
        agent.shutdown()
    return 0
