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

from agent import logs
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


def main(config_path: Path) -> int:
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    return run(cfg)


def open_gpio(cfg: AgentConfig, events: queue.Queue[Any], core: Core) -> tuple[dict[str, InputPin], Feedback, Any]:
    """Inputs and outputs; mock pins in simulation. No GPIO is a fault, not a crash."""
    factory: Any = None
    if cfg.simulation:
        from gpiozero.pins.mock import MockFactory

        factory = MockFactory()
    pins: dict[str, InputPin] = {}
    try:
        for item in (*cfg.inputs.panic_buttons, *cfg.inputs.digital):
            pins[item.name] = InputPin(item, on_edge=events.put, pin_factory=factory)
        feedback = Feedback(cfg.outputs, pin_factory=factory)
    except Exception as exc:  # gpiozero raises many kinds: no chip, pin in use, no permission
        log.error("GPIO unavailable: %s", exc)
        core.faults["gpio_unavailable"] = str(exc)[:200]
        feedback = Feedback(cfg.outputs.model_copy(update={"led": None, "buzzer": None}))
    return pins, feedback, factory


def run(cfg: AgentConfig) -> int:
    events: queue.Queue[Any] = queue.Queue()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        events.put("stop")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    clock = Clock()
    outbox = Outbox(cfg.outbox_path, cfg.outbox, on_fault=lambda code, detail: events.put(
        lambda: core.fault(code, detail)))
    outbox.open()
    reader = GnssReader(cfg.gnss, on_fix=events.put, on_state=lambda s, d: events.put((s, d)))
    core = Core(cfg, events=events, outbox=outbox, clock=clock, gnss_info=reader.counters)
    uplink = Uplink(
        cfg.mqtt,
        client_id=cfg.mqtt.client_id or f"patrol-{cfg.vehicle.id}",
        subscriptions=[core.topics.command, core.topics.alert_ack],
        will=lambda: (core.topics.status, core.status_message("offline", "connection lost")),
        events=events,
    )
    core.uplink = uplink
    pins, feedback, factory = open_gpio(cfg, events, core)
    Panic(core, cfg, feedback=feedback, pins=pins, pin_factory=factory)
    control = ControlServer(cfg.runtime_dir, events)
    uplink.start()
    control.start()
    reader.start()
    log.info("patrol-agent started: vehicle %s, %d messages waiting", cfg.vehicle.id, outbox.depth)
    try:
        core.run()
    finally:
        reader.stop()
        for pin in pins.values():
            pin.close()
        feedback.close()
        control.stop()
        outbox.flush()
        uplink.stop(last_words=(core.topics.status, core.status_message("offline", "shutdown")))
        outbox.close()
        log.info("patrol-agent stopped")
    return 0
