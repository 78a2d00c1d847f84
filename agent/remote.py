"""Remote commands and dispatch's acknowledgements: what arrives on the vehicle's inbound topics.

A component on the core thread. A command on ``<prefix>/<vehicle>/cmd`` is
checked by :mod:`agent.commands`, run from the allow-list, and answered on
``reply``; a rejection is also reported as a ``command_rejected`` event. A
command id already run within its validity is answered as a duplicate and
not run again. An acknowledgement or clear on ``alert/ack`` goes to the
alerts component. Under a flood, rejections are logged and reported at a
bounded rate, each with the count of those held back.
"""

from __future__ import annotations

import heapq
import logging
from datetime import datetime

from agent import commands
from agent.alerts import Alerts
from agent.events import Event, Post, Received, Reload
from agent.messages import CommandReply, Priority
from agent.reporting import Reporting
from agent.topics import Topics
from agent.unit import RateLimit, Sender

log = logging.getLogger(__name__)

MAX_REMEMBERED = 50_000  # command ids kept for de-duplication (each until its expiry)
COMMAND_BURST = 20  # commands run at once; beyond, rejected as rate limited (the reply says so)
COMMANDS_PER_S = 5.0  # a dispatcher sends a handful a minute; a flood is a fault or an attack


class RemoteCommands:
    def __init__(self, vehicle_id: str, topics: Topics, sender: Sender, reporting: Reporting, alerts: Alerts,
                 post: Post) -> None:
        self._vehicle_id = vehicle_id
        self._topics = topics
        self._sender = sender
        self._reporting = reporting
        self._alerts = alerts
        self._post = post
        self._seen: dict[str, datetime] = {}  # command id -> its expiry
        self._expiries: list[tuple[datetime, str]] = []
        self._log_limit = RateLimit(burst=10, per_s=1.0)
        self._event_limit = RateLimit(burst=20, per_s=1.0)
        self._reply_limit = RateLimit(burst=100, per_s=20.0)
        self._run_limit = RateLimit(burst=COMMAND_BURST, per_s=COMMANDS_PER_S)  # commands run, not just parsed
        self._accepted_log = RateLimit(burst=10, per_s=1.0)
        self.rejected = 0

    def handle(self, event: Event, now: float) -> None:
        match event:
            case Received(topic=topic, payload=payload, retain=retain) if topic == self._topics.command:
                self._command(payload, retain, now)
            case Received(topic=topic, payload=payload, retain=retain) if topic == self._topics.alert_ack:
                if retain:
                    self._rejected(now, "alert_ack", None, "retained acknowledgements are not accepted", reply=False)
                    return
                problem = self._alerts.from_dispatch(payload)
                if problem is not None:
                    self._rejected(now, "alert_ack", None, problem, reply=False)
            case Received(topic=topic):
                log.info("message on %s ignored (no handler)", topic)
            case _:
                pass

    def tick(self, now: float) -> None:
        pass

    def _command(self, payload: bytes, retain: bool, now: float) -> None:
        wall = self._sender.clock.now()[0]
        try:
            command, args = commands.parse(payload, retained=retain, vehicle_id=self._vehicle_id, now=wall)
        except commands.CommandRejected as exc:
            self._rejected(now, exc.verb or "command", exc.command_id, exc.reason, verb=exc.verb)
            return
        self._forget_expired(wall)
        if command.command_id in self._seen:
            self._rejected(now, command.verb, command.command_id, "duplicate: this command id has already run",
                           verb=command.verb)
            return
        if self._run_limit.allow(now) is None:
            self._rejected(now, command.verb, command.command_id,
                           f"rate limited: more than {COMMANDS_PER_S:g} commands a second; send it again later",
                           verb=command.verb)
            return
        self._remember(command.command_id, command.expires_at)
        held = self._accepted_log.allow(now)
        if held is not None:
            more = f" ({held} more accepted since the last report)" if held else ""
            log.info("command %s (%s) accepted%s", command.verb, command.command_id, more)
        ok, detail = self._run(command.verb, args, now)
        self._reply(command.command_id, command.verb, ok=ok, detail=detail)

    def _run(self, verb: str, args: object, now: float) -> tuple[bool, str]:
        if verb == "ping":
            return True, "pong"
        if verb == "report_position":
            self._reporting.report("requested")
            return True, "position sent"
        if isinstance(args, commands.SetReportingArgs):
            self._reporting.faster(args.interval_s, args.duration_s, now)
            return True, f"a position every {args.interval_s:g} s for {args.duration_s:g} s"
        if isinstance(args, commands.AlertArgs):
            action, done = ("acknowledge", "acknowledged") if verb == "ack_alert" else ("clear", "cleared")
            problem = self._alerts.dispatch_action(args.alert_id, action, args.operator)
            return (False, problem) if problem else (True, f"alert {done}")
        if verb == "reload_config":
            self._post(Reload())
            return True, "reloading"
        raise AssertionError(verb)  # the allow-list and this dispatch are kept in step by a test

    def _remember(self, command_id: str, expires: datetime) -> None:
        if len(self._seen) >= MAX_REMEMBERED:
            _, oldest = heapq.heappop(self._expiries)
            self._seen.pop(oldest, None)
        self._seen[command_id] = expires
        heapq.heappush(self._expiries, (expires, command_id))

    def _forget_expired(self, wall: datetime) -> None:
        while self._expiries and self._expiries[0][0] <= wall:
            _, command_id = heapq.heappop(self._expiries)
            self._seen.pop(command_id, None)

    def _rejected(self, now: float, name: str, command_id: str | None, reason: str, *, verb: str | None = None,
                  reply: bool = True) -> None:
        self.rejected += 1
        held = self._log_limit.allow(now)
        if held is not None:
            more = f" ({held} more rejected since the last report)" if held else ""
            log.warning("command rejected: %s%s", reason, more)
        held = self._event_limit.allow(now)
        if held is not None:
            detail = reason if not held else f"{reason} ({held} more rejected since the last report)"
            self._sender.event("command_rejected", name, detail=detail)
        if reply and self._reply_limit.allow(now) is not None:
            self._reply(command_id, verb, ok=False, detail=reason)

    def _reply(self, command_id: str | None, verb: str | None, *, ok: bool, detail: str | None) -> None:
        sender = self._sender
        sender.send(CommandReply(**sender.envelope(), command_id=command_id, verb=verb, ok=ok, detail=detail),
                    Priority.REPLY)

