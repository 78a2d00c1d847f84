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
from agent.uplink import Uplink
from drivers.gnss.reader import GnssReader

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
    control = ControlServer(cfg.runtime_dir, events)
    uplink.start()
    control.start()
    reader.start()
    log.info("patrol-agent started: vehicle %s, %d messages waiting", cfg.vehicle.id, outbox.depth)
    try:
        core.run()
    finally:
        reader.stop()
        control.stop()
        outbox.flush()
        uplink.stop(last_words=(core.topics.status, core.status_message("offline", "shutdown")))
        outbox.close()
        log.info("patrol-agent stopped")
    return 0
