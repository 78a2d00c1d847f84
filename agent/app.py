"""The daemon: wires the components together and runs the core loop.

Main thread: start-up, signal handling and the core loop. Components own
their own threads (GNSS reader) and talk to the core through a queue.
"""

from __future__ import annotations

import logging
import queue
import signal
import sys
from pathlib import Path
from types import FrameType

from agent import logs
from agent.config import AgentConfig, load
from agent.errors import ConfigError
from drivers.gnss.fix import Fix
from drivers.gnss.reader import GnssReader, GnssState

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
    events: queue.Queue[object] = queue.Queue()
    stopping = False

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        events.put(None)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    reader = GnssReader(cfg.gnss, on_fix=events.put, on_state=lambda s, d: events.put((s, d)))
    reader.start()
    log.info("patrol-agent started for vehicle %s", cfg.vehicle.id)
    while not stopping:
        try:
            item = events.get(timeout=1.0)
        except queue.Empty:
            continue
        if isinstance(item, Fix):
            log.debug("fix %s mode %d %.6f %.6f", item.time_iso, item.mode, item.lat or 0, item.lon or 0)
        elif isinstance(item, tuple) and isinstance(item[0], GnssState):
            log.info("GNSS state %s", item[0].value)
    reader.stop()
    log.info("patrol-agent stopped")
    return 0
