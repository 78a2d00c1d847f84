"""What the unit's components share: their contract, the sender, and the fault register.

Core thread only. A component is one part of the unit's behaviour
(positioning, reporting, alerts, buttons, remote commands, health, the
forwarder to the uplink): it gets every event through :meth:`Component.handle`
and the passing of time through :meth:`Component.tick`, and is given what it
needs when the unit is wired (:mod:`agent.app`); nothing assigns another
object's attributes.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any, Protocol

from agent.clock import Clock
from agent.events import Event
from agent.messages import InputEvent, Message, Priority, TimeSource
from agent.outbox import Outbox
from agent.topics import Topics

log = logging.getLogger(__name__)


class Component(Protocol):
    def handle(self, event: Event, now: float) -> None:
        """React to one event (most components match a few kinds and ignore the rest)."""

    def tick(self, now: float) -> None:
        """Time has passed (``now``: monotonic seconds); called every loop turn."""


class Sender:
    """Messages into the outbox, each named (boot, seq) when it enters it.

    ``seq`` is taken at :meth:`send`, not when the envelope is built, so that a
    message that fails to build leaves no gap. An alert is fsynced before
    ``send`` returns (unless the card refuses it: then it is kept in RAM and
    published all the same). The core has the forwarder publish what is new
    after each event it handles."""

    def __init__(self, vehicle_id: str, topics: Topics, outbox: Outbox, clock: Clock) -> None:
        self.vehicle_id = vehicle_id
        self.topics = topics
        self.outbox = outbox
        self.clock = clock
        self.sent = 0

    def envelope(self, moment: tuple[datetime, TimeSource] | None = None, *, stored: bool = True) -> dict[str, Any]:
        """The envelope of a new message; ``stored=False`` for one that never enters the outbox (the
        retained status, the last will): it takes no ``seq``, so it can never make a gap."""
        when, source = moment or self.clock.now()
        envelope: dict[str, Any] = {
            "vehicle_id": self.vehicle_id,
            "boot": self.outbox.seq.boot,
            "msg_id": str(uuid.uuid4()),
            "time": when,
            "time_source": source,
        }
        if stored:
            envelope["seq"] = self.outbox.seq.peek()
        return envelope

    def send(self, message: Message, priority: int, *, state: tuple[str, str | None] | None = None) -> int:
        """Into the outbox with the next ``seq``; ``state``: a durable change made in the same step
        (the emergency with its alert). Returns the outbox row id."""
        seq = self.outbox.seq.peek()
        if message.seq != seq:
            message = message.model_copy(update={"seq": seq})
        payload = message.model_dump_json(exclude={"historical"}).encode()
        topic = self.topics.for_kind(message.kind)
        self.outbox.seq.take()
        row = self.outbox.accept(seq, priority, topic, payload, state=state)
        self.sent += 1  # the core has the forwarder pump after every event and tick
        return row

    def event(self, event: str, name: str, *, active: bool | None = None, detail: str | None = None) -> None:
        self.send(InputEvent(**self.envelope(), event=event, name=name, active=active, detail=detail),
                  Priority.EVENT)


class Faults:
    """The unit's open faults, by code. Raising or clearing one is reported to dispatch as an event."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self.open: dict[str, str] = {}
        self.raised = 0

    def raise_(self, code: str, detail: str) -> None:
        if self.open.get(code) == detail:
            return
        if code not in self.open:
            self.raised += 1
        self.open[code] = detail
        self._sender.event("fault", code, active=True, detail=detail[:400])

    def clear(self, code: str) -> None:
        if self.open.pop(code, None) is not None:
            log.info("fault cleared: %s", code)
            self._sender.event("fault_cleared", code, active=False)

    def clear_prefix(self, prefix: str) -> None:
        for code in [c for c in self.open if c.startswith(prefix)]:
            self.clear(code)

    def __contains__(self, code: object) -> bool:
        return code in self.open


class RateLimit:
    """A token bucket: ``burst`` at once, then ``per_s``; counts what it held back."""

    def __init__(self, burst: int, per_s: float) -> None:
        self._burst = burst
        self._per_s = per_s
        self._tokens = float(burst)
        self._at: float | None = None
        self.suppressed = 0

    def allow(self, now: float) -> int | None:
        """None when held back; else how many were held back since the last one allowed."""
        if self._at is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._per_s)
        self._at = now
        if self._tokens < 1:
            self.suppressed += 1
            return None
        self._tokens -= 1
        held, self.suppressed = self.suppressed, 0
        return held
