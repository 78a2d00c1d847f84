"""The core's inbox: one queue, two lanes, so that an officer's press is never behind a flood.

Every other thread posts its events here (:mod:`agent.events`). What an
officer did (a button edge, a simulated press or release, an installer's
test alarm) and ``Stop`` go in the urgent lane and are taken before anything
else that waits: a burst of commands from dispatch, a backlog's
acknowledgements or a chatty receiver cannot hold a panic press back. Each
lane keeps its own order (a press before its release).
"""

from __future__ import annotations

import queue
from collections import deque

from agent.control import ControlRequest
from agent.events import Event, Stop
from drivers.gpio import Edge

URGENT_REQUESTS = frozenset({"sim_press", "sim_release", "panic_test"})


def urgent(event: Event) -> bool:
    """Taken before the rest: a button edge, Stop, a control request that presses a button."""
    return isinstance(event, Edge | Stop) or (isinstance(event, ControlRequest) and event.cmd in URGENT_REQUESTS)


class Inbox(queue.Queue[Event]):
    """A ``queue.Queue`` (same blocking ``get``/``put``) whose ``get`` serves the urgent lane first."""

    def _init(self, maxsize: int) -> None:
        self.queue: deque[Event] = deque()
        self._urgent: deque[Event] = deque()

    def _qsize(self) -> int:
        return len(self.queue) + len(self._urgent)

    def _put(self, item: Event) -> None:
        (self._urgent if urgent(item) else self.queue).append(item)

    def _get(self) -> Event:
        return self._urgent.popleft() if self._urgent else self.queue.popleft()
