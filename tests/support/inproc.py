"""The agent in the test's own process: real outbox, uplink, broker and pty; GPIO on the test's MockFactory.

Used where a test must drive mock pins with precise timing (bounce, hold) or
read the officer's LED, which only the process that owns the MockFactory can.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypeVar

from gpiozero.pins.mock import MockFactory

from agent.app import Agent
from agent.config import AgentConfig

T = TypeVar("T")


class RunningAgent:
    def __init__(self, cfg: dict[str, Any], factory: MockFactory) -> None:
        self.cfg = AgentConfig.model_validate(cfg)
        self.factory = factory
        self.agent = Agent(self.cfg, pin_factory=factory)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunningAgent:
        self.agent.start()
        self._thread = threading.Thread(target=self.agent.run, name="core", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.agent.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.agent.shutdown()

    def on_core(self, fn: Any, timeout: float = 5.0) -> Any:
        """Run ``fn()`` on the core thread (which owns the state) and return its result."""
        return self.agent.on_core(fn, timeout)

    def pin(self, number: int) -> Any:
        return self.factory.pin(number)

    def press(self, number: int = 17) -> None:
        self.pin(number).drive_low()  # panic buttons in these tests: pull-up, active low

    def release(self, number: int = 17) -> None:
        self.pin(number).drive_high()

    @property
    def state_dir(self) -> Path:
        return self.cfg.state_dir
