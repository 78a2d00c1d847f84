"""The forwarder: outbox rows out through the uplink, in the right order, and deleted on their PUBACK.

A component on the core thread; the only part that talks to the uplink
(through its thread-safe hand-over methods). It follows the link from the
uplink's events, and keeps the link busy: open alerts first, then the
newest position, then the backlog oldest-first, marked ``historical``: a
row accepted before the link came up, told by its id (the outbox's next id
taken at link-up), never by a clock that may have stepped since. A
row is handed to the uplink once per connection; when the connection drops
everything handed on it is released and offered again on the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import Clock
from agent.config import MqttConfig
from agent.events import Acked, Event, LinkDown, LinkUp
from agent.messages import Priority
from agent.outbox import Outbox, Row
from agent.unit import Faults
from agent.uplink import Uplink

log = logging.getLogger(__name__)

HANDOVER = 200  # rows queued at the uplink beyond its window, so that it never waits for the core
REFILL = HANDOVER // 2  # the backlog is handed over by this many at least (fewer, larger hand-overs)
HISTORICAL_FALSE = b',"historical":false}'
HISTORICAL_TRUE = b',"historical":true}'


@dataclass(slots=True)
class LinkState:
    """The link as the core knows it from the uplink's events."""

    generation: int = -1  # the connection that is up, or -1
    broker: str | None = None
    protocol: str | None = None
    reconnects: int = 0
    last_error: str | None = None
    up_since: float | None = None  # monotonic

    @property
    def up(self) -> bool:
        return self.generation >= 0


class Forwarder:
    def __init__(self, cfg: MqttConfig, outbox: Outbox, uplink: Uplink, clock: Clock, *,
                 online_status: Callable[[int], tuple[str, bytes]], faults: Faults) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._uplink = uplink
        self._clock = clock
        self._faults = faults
        self.link = LinkState()
        self._online_status = online_status  # the retained "online" status of a connection, built at its link-up
        self._handed: set[int] = set()  # row ids handed to the uplink on this connection
        self._live_from: int | None = None  # rows from this id on were accepted while the link was up
        self._newest_due = False
        self._tokens = 0.0
        self._tokens_at = clock.monotonic()
        self.published = 0
        self.refused = 0
        self._urgent = False  # an alert waits for a link that is down: the uplink retries at once, then often

    def handle(self, event: Event, now: float) -> None:
        match event:
            case LinkUp(generation=generation, broker=broker, protocol=protocol, reconnects=reconnects):
                self._released()
                self.link = LinkState(generation, broker, protocol, reconnects, self.link.last_error, now)
                self._live_from = self._outbox.next_id
                self._newest_due = True
                alerts = self._outbox.lease(10, max_priority=Priority.ALERT)
                if alerts:
                    self._submit(alerts, urgent=True)  # open alerts before anything else
                topic, payload = self._online_status(generation)
                self._uplink.publish(generation, topic, payload, retain=True)
                self.pump()
            case LinkDown(generation=generation, reason=reason):
                self.link.last_error = reason
                if generation == self.link.generation:
                    self._released()
                    self.link.generation, self.link.up_since = -1, None
            case Acked(acks=acks):
                self._acked(acks)
            case _:
                pass

    def tick(self, now: float) -> None:
        self._outbox.tick()
        urgent = not self.link.up and self._outbox.alerts_waiting > 0
        if urgent != self._urgent:
            self._urgent = urgent
            self._uplink.hurry(urgent)
        self.pump()

    def _released(self) -> None:
        self._handed.clear()
        self._outbox.release_all()

    def _acked(self, acks: tuple[tuple[int, str | None], ...]) -> None:
        done = []
        for row_id, refused in acks:
            if row_id not in self._handed:
                continue  # a PUBACK of a connection that has since dropped: its rows were released
            self._handed.discard(row_id)
            if refused is not None:  # MQTT 5: the broker took it and will not deliver it (an ACL...)
                self.refused += 1
                log.error("the broker refused message %d: %s", row_id, refused)
                self._faults.raise_("publish_refused", f"the broker refused a message ({refused}): check its ACL "
                                                       "for this vehicle's topics")
            done.append(row_id)
        self._outbox.ack(done)
        self.pump()

    def pump(self) -> None:
        """Keep the link busy: alerts at once, then the newest position, then the rest in order."""
        if not self.link.up:
            return
        alerts = self._outbox.lease(10, max_priority=Priority.ALERT)
        if alerts:
            self._submit(alerts, urgent=True)
            if len(self._handed) > len(alerts):
                return  # the uplink has work queued: the backlog waits for the next turn, not the alert
        if self._newest_due:
            self._newest_due = False
            newest = self._outbox.newest(Priority.POSITION)
            if newest is not None:
                self._submit([newest], newest_id=newest.id)
        free = self._cfg.inflight_window + HANDOVER - len(self._handed)
        if free >= REFILL or not self._handed:
            rows = self._allowed(self._outbox.lease(free))
            if rows:
                self._submit(rows)

    def _allowed(self, rows: list[Row]) -> list[Row]:
        """Apply the backlog rate limit to historical rows; the rest go back."""
        rate = self._cfg.backlog_rate_per_s
        if rate <= 0:
            return rows
        now = self._clock.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        allowed = []
        for index, row in enumerate(rows):
            if self._historical(row):
                if self._tokens < 1:
                    self._outbox.release(r.id for r in rows[index:])
                    break
                self._tokens -= 1
            allowed.append(row)
        return allowed

    def _historical(self, row: Row) -> bool:
        return row.priority != Priority.ALERT and self._live_from is not None and row.id < self._live_from

    def _submit(self, rows: list[Row], *, urgent: bool = False, newest_id: int | None = None) -> None:
        items = []
        for row in rows:
            historical = self._historical(row) and row.id != newest_id
            items.append((row.id, row.topic, row.payload[:-1] + (HISTORICAL_TRUE if historical else HISTORICAL_FALSE)))
        self._uplink.submit(self.link.generation, items, urgent=urgent)
        self._handed.update(row.id for row in rows)
        self.published += len(rows)
