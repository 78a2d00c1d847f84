"""The uplink's hand-over channel: how other threads give the uplink thread work without touching paho.

A deque of typed work items and a non-blocking wake-up pipe. Any thread
:meth:`Channel.hand`s an item (append, then one byte on the pipe); the
uplink thread ``select``s on :attr:`Channel.wake_fd` beside the broker's
socket, or :meth:`Channel.sleep`s on it between attempts, and
:meth:`Channel.take`s everything handed so far, in order.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Submit:
    """Tracked messages (token = outbox row id) for one connection."""

    generation: int
    items: tuple[tuple[int, str, bytes], ...]
    urgent: bool


@dataclass(frozen=True, slots=True)
class Publish:
    """One untracked message (the retained status) for one connection."""

    generation: int
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class Stop:
    last_words: tuple[str, bytes] | None


@dataclass(frozen=True, slots=True)
class Hurry:
    urgent: bool  # an alert waits: retry at once, then at the short interval


Work = Submit | Publish | Stop | Hurry


class Channel:
    def __init__(self) -> None:
        self._items: deque[Work] = deque()
        self.wake_fd, self._wake_w = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self._wake_w, False)

    def hand(self, work: Work) -> None:
        """Any thread: queue ``work`` and wake the uplink thread."""
        self._items.append(work)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def take(self) -> list[Work]:
        """The uplink thread: everything handed so far, oldest first."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.read(self.wake_fd, 4096)
        work = []
        while self._items:
            work.append(self._items.popleft())
        return work

    def sleep(self, timeout: float) -> None:
        """The uplink thread: wait up to ``timeout`` s, or until something is handed."""
        with contextlib.suppress(InterruptedError):
            select.select([self.wake_fd], [], [], timeout)

    def close(self) -> None:
        for fd in (self.wake_fd, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
