"""The core: one thread that owns the agent's state.

Runs on the daemon's main thread. Drivers, paho callbacks and the control
socket never touch this state: they put events on ``events`` and return.
The loop turns fixes into position reports (the reporting policy, or the
emergency rate), messages into outbox rows, and outbox rows into publishes
through the uplink, alerts first; it commits the outbox on time and answers
the control socket.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent import __version__, commands
from agent.clock import Clock
from agent.config import AgentConfig
from agent.control import ControlRequest
from agent.messages import (
    CommandReply,
    Health,
    InputEvent,
    Message,
    Position,
    PositionReport,
    Priority,
    Status,
    TimeSource,
)
from agent.notify import Notifier
from agent.outbox import Outbox, Row
from agent.policy import ReportingPolicy
from agent.system import snapshot
from agent.topics import Topics
from agent.uplink import LinkEvent, Uplink
from drivers.gnss.fix import Fix
from drivers.gnss.reader import GnssState
from drivers.gpio import Edge

log = logging.getLogger(__name__)

TICK_S = 0.05
SWITCH_INTERVAL_S = 0.001
HANDOVER = 200  # rows queued at the uplink beyond its window, so that it never waits for the core
HISTORICAL_FALSE = b',"historical":false}'
HISTORICAL_TRUE = b',"historical":true}'


def position_of(fix: Fix) -> Position | None:
    if not fix.has_position:
        return None
    assert fix.lat is not None and fix.lon is not None
    return Position(
        lat=fix.lat, lon=fix.lon, alt_msl=fix.alt_msl, speed_mps=fix.speed_mps, course_deg=fix.course_deg,
        mode=3 if fix.mode == 3 else 2, sats_used=fix.sats_used, hdop=fix.hdop, quality=fix.quality,
        fix_time=None if fix.time_ms is None else datetime.fromtimestamp(fix.time_ms / 1000, tz=UTC),
    )


class Core:
    def __init__(
        self,
        cfg: AgentConfig,
        *,
        events: queue.Queue[Any],
        outbox: Outbox,
        clock: Clock,
        gnss_info: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.events = events
        self.outbox = outbox
        self.clock = clock
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.vehicle.id)
        self.uplink: Uplink | None = None
        self.policy = ReportingPolicy(cfg.reporting)
        self.gnss_info = gnss_info or (lambda: {})
        self.started = clock.monotonic()
        self.stopping = False
        self.hang = False  # set by tests through the control socket: the loop stops making progress
        self.last_fix: Fix | None = None
        self.last_position_fix: Fix | None = None
        self.last_position_at: float | None = None  # monotonic
        self.gnss_state: GnssState = GnssState.OPENING
        self.faults: dict[str, str] = {}
        self._handed: set[int] = set()  # row ids handed to the uplink on this connection
        self._generation = -1
        self._link_up_wall: float | None = None
        self._newest_position_due = False
        self._tokens = 0.0
        self._tokens_at = clock.monotonic()
        self._next_health = clock.monotonic() + cfg.health.interval_s
        self._next_expire = clock.monotonic() + 600
        self.handlers: dict[str, Callable[[ControlRequest], None]] = {"status": self._control_status}
        if cfg.simulation:
            self.handlers["debug_hang"] = self._control_hang
        self.on_tick: list[Callable[[float], None]] = []
        self.on_ack: list[Callable[[int], None]] = []
        self.on_edge: Callable[[Edge], None] = lambda edge: None
        self.on_alert_ack: Callable[[bytes], None] = lambda payload: None
        self.inputs: dict[str, bool] = {}
        self.override: tuple[float, float] | None = None  # (interval_s, until monotonic): set_reporting
        self.notifier = Notifier()
        self._last_watchdog = float("-inf")
        self._last_status = float("-inf")
        self.emergency_id: Callable[[], str | None] = lambda: None
        self.published = 0

    # --- building and enqueueing messages ----------------------------------------

    def envelope(self, moment: tuple[datetime, Any] | None = None) -> dict[str, Any]:
        when, source = moment or self.clock.now()
        return {
            "vehicle_id": self.cfg.vehicle.id,
            "seq": self.outbox.seq.take(),
            "msg_id": str(uuid.uuid4()),
            "time": when,
            "time_source": source,
        }

    def send(self, message: Message, priority: int) -> None:
        """Into the outbox (an alert is fsynced before this returns), then out if the link is up."""
        payload = message.model_dump_json(exclude={"historical"}).encode()
        self.outbox.accept(message.seq, priority, self.topics.for_kind(message.kind), payload)
        self.pump()

    def report_position(self, reason: str, fix: Fix | None, *, alert_id: str | None = None) -> None:
        fix = fix or self.last_fix
        moment = None
        if fix is not None and fix.time_ms is not None:
            moment = (datetime.fromtimestamp(fix.time_ms / 1000, tz=UTC), TimeSource.GNSS)
        report = PositionReport(
            **self.envelope(moment), reason=reason, fix=None if fix is None else position_of(fix),
            gnss_mode=1 if fix is None else fix.mode, alert_id=alert_id,
        )
        self.policy.reported(fix, self.clock.monotonic())
        self.send(report, Priority.POSITION)

    def event(self, event: str, name: str, *, active: bool | None = None, detail: str | None = None) -> None:
        self.send(InputEvent(**self.envelope(), event=event, name=name, active=active, detail=detail),
                  Priority.EVENT)

    def fault(self, code: str, detail: str) -> None:
        """A fault: logged, kept for health, and reported to dispatch as an event."""
        if self.faults.get(code) != detail:
            self.faults[code] = detail
            self.event("fault", code, active=True, detail=detail)

    def status_message(self, state: str, reason: str | None = None) -> bytes:
        status = Status(**self.envelope(), state=state, agent_version=__version__,
                        unit=self.cfg.vehicle.unit, directorate=self.cfg.vehicle.directorate, reason=reason)
        return status.model_dump_json().encode()

    # --- the loop ---------------------------------------------------------------

    def run(self) -> None:
        # The uplink thread can be busy for seconds draining a backlog; with the default
        # 5 ms GIL switch interval an alert waiting on this thread pays that several times.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        while not self.stopping:
            try:
                item = self.events.get(timeout=TICK_S)
            except queue.Empty:
                item = None
            if item is not None:
                self.handle(item)
                for _ in range(500):  # drain what is queued before the periodic work
                    try:
                        self.handle(self.events.get_nowait())
                    except queue.Empty:
                        break
            self.tick()

    def handle(self, item: Any) -> None:
        if isinstance(item, LinkEvent):
            self.on_link(item)
        elif isinstance(item, Fix):
            self.on_fix(item)
        elif isinstance(item, Edge):
            self.on_edge(item)
        elif isinstance(item, ControlRequest):
            self.on_control(item)
        elif isinstance(item, tuple) and item and isinstance(item[0], GnssState):
            self.on_gnss_state(item[0], item[1])
        elif callable(item):
            item()
        elif item == "stop":
            self.stopping = True
        elif item == "reload":
            self.on_reload()

    def on_reload(self) -> None:
        """Replaced by the app: re-read the config and apply what can be applied live."""
        log.info("reload requested, but this agent cannot reload")

    def tick(self) -> None:
        while self.hang:  # a test's way to hang the loop: the watchdog pings must stop
            time.sleep(0.05)
        now = self.clock.monotonic()
        interval = self.notifier.watchdog_interval_s
        if interval is not None and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notifier.watchdog()  # from the loop itself: a hung loop stops the pings
        if now - self._last_status >= 10:
            self._last_status = now
            self.notifier.status(self.status_line())
        self.outbox.tick()
        for hook in self.on_tick:
            hook(now)
        if now >= self._next_health:
            self._next_health = now + self.cfg.health.interval_s
            self.send_health()
        if now >= self._next_expire:
            self._next_expire = now + 600
            self.outbox.expire()
        self.pump()

    # --- GNSS -------------------------------------------------------------------

    def on_fix(self, fix: Fix) -> None:
        if fix.time_ms is not None:
            self.clock.gnss_time(fix.time_ms / 1000)
        self.last_fix = fix
        if fix.has_position:
            self.last_position_fix = fix
            self.last_position_at = self.clock.monotonic()
        now = self.clock.monotonic()
        if self.emergency_reporting():
            return
        reason = self.policy.decide(fix, now)
        if reason is None and self.override is not None:
            interval, until = self.override
            if now > until:
                self.override = None
            elif self.policy.since_last(now) >= interval:
                reason = "requested"
        if reason is not None:
            self.report_position(reason, fix)

    def emergency_reporting(self) -> bool:
        """True while an emergency owns the reporting rate (the panic module overrides this)."""
        return False

    def on_gnss_state(self, state: GnssState, detail: str) -> None:
        self.gnss_state = state
        if state in (GnssState.DEVICE_MISSING, GnssState.NO_NMEA, GnssState.NO_DATA):
            self.fault(f"gnss_{state.value}", detail)
        elif self.faults:
            for code in [c for c in self.faults if c.startswith("gnss_")]:
                del self.faults[code]
                self.event("fault_cleared", code, active=False)

    # --- the link ---------------------------------------------------------------

    def on_link(self, ev: LinkEvent) -> None:
        if ev.kind == "up":
            self._generation = ev.generation
            self._handed.clear()
            self.outbox.release_all()
            self._link_up_wall = self.clock.wall()
            self._newest_position_due = True
            if self.uplink is not None:
                alerts = self.outbox.lease(10, max_priority=Priority.ALERT)
                if alerts:
                    self._submit(self.uplink, alerts, urgent=True)  # open alerts before anything else
                self.uplink.publish(self.topics.status, self.status_message("online"), retain=True)
            self.pump()
        elif ev.kind == "down":
            if ev.generation == self._generation:
                self._handed.clear()
                self.outbox.release_all()
                self._generation = -1
        elif ev.kind == "acks" and self.uplink is not None:
            self.on_acks(self.uplink.take_acks())
        elif ev.kind == "message":
            self.on_message(ev.topic, ev.payload, ev.retain)

    def on_acks(self, acks: list[tuple[int, str | None]]) -> None:
        done = []
        for row_id, refused in acks:
            if row_id not in self._handed:
                continue  # a PUBACK of a connection that has since dropped: its rows were released
            self._handed.discard(row_id)
            if refused is not None:
                self.fault("publish_refused", f"the broker refused a message: {refused}")
            done.append(row_id)
        self.outbox.ack(done)
        for row_id in done:
            for hook in self.on_ack:
                hook(row_id)
        self.pump()

    def on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        if topic == self.topics.alert_ack:
            if retain:
                self.event("command_rejected", "alert_ack", detail="retained acknowledgements are not accepted")
                return
            self.on_alert_ack(payload)
        elif topic == self.topics.command:
            self.on_command(payload, retain)
        else:
            log.info("message on %s ignored (no handler)", topic)

    def on_command(self, payload: bytes, retain: bool) -> None:
        try:
            command, args = commands.parse(payload, retained=retain, vehicle_id=self.cfg.vehicle.id,
                                           now=self.clock.now()[0])
        except commands.CommandRejected as exc:
            log.warning("command rejected: %s", exc.reason)
            self.event("command_rejected", exc.verb or "command", detail=exc.reason)
            self.reply(exc.command_id, exc.verb, ok=False, detail=exc.reason)
            return
        log.info("command %s (%s) accepted", command.verb, command.command_id)
        detail = self.run_command(command.verb, args)
        self.reply(command.command_id, command.verb, ok=True, detail=detail)

    def run_command(self, verb: str, args: Any) -> str:
        if verb == "ping":
            return "pong"
        if verb == "report_position":
            self.report_position("requested", None)
            return "position sent"
        if verb == "set_reporting":
            self.override = (args.interval_s, self.clock.monotonic() + args.duration_s)
            return f"a position every {args.interval_s:g} s for {args.duration_s:g} s"
        if verb in ("ack_alert", "clear_alert"):
            action = "acknowledge" if verb == "ack_alert" else "clear"
            self.on_alert_ack(json.dumps({"alert_id": args.alert_id, "action": action,
                                          "operator": args.operator}).encode())
            return f"{action} passed to the alert"
        if verb == "reload_config":
            self.events.put("reload")
            return "reloading"
        raise AssertionError(verb)  # the allow-list and this dispatch are kept in step by a test

    def reply(self, command_id: str | None, verb: str | None, *, ok: bool, detail: str | None) -> None:
        self.send(CommandReply(**self.envelope(), command_id=command_id, verb=verb, ok=ok, detail=detail),
                  Priority.REPLY)

    def pump(self) -> None:
        """Keep the link busy: alerts at once, then the newest position, then the rest in order."""
        uplink = self.uplink
        if uplink is None or not uplink.connected or self._generation < 0:
            return
        alerts = self.outbox.lease(10, max_priority=Priority.ALERT)
        if alerts:
            self._submit(uplink, alerts, urgent=True)
        if self._newest_position_due:
            self._newest_position_due = False
            newest = self.outbox.newest(Priority.POSITION)
            if newest is not None:
                self._submit(uplink, [newest], newest_id=newest.id)
        free = self.cfg.mqtt.inflight_window + HANDOVER - len(self._handed)
        if free > 0:
            rows = self._allowed(self.outbox.lease(free))
            if rows:
                self._submit(uplink, rows)

    def _allowed(self, rows: list[Row]) -> list[Row]:
        """Apply the backlog rate limit to historical rows; the rest go back."""
        rate = self.cfg.mqtt.backlog_rate_per_s
        if rate <= 0:
            return rows
        now = self.clock.monotonic()
        self._tokens = min(rate, self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        allowed = []
        for index, row in enumerate(rows):
            if self._historical(row):
                if self._tokens < 1:
                    self.outbox.release(r.id for r in rows[index:])
                    break
                self._tokens -= 1
            allowed.append(row)
        return allowed

    def _historical(self, row: Row) -> bool:
        return (row.priority != Priority.ALERT and self._link_up_wall is not None
                and row.accepted_at < self._link_up_wall)

    def _submit(self, uplink: Uplink, rows: list[Row], *, urgent: bool = False, newest_id: int | None = None) -> None:
        items = []
        for row in rows:
            historical = self._historical(row) and row.id != newest_id
            items.append((row.id, row.topic, row.payload[:-1] + (HISTORICAL_TRUE if historical else HISTORICAL_FALSE)))
        if uplink.submit(items, urgent=urgent):
            self._handed.update(row.id for row in rows)
            self.published += len(rows)
        else:
            self.outbox.release(row.id for row in rows)

    # --- health and control ---------------------------------------------------------

    def status_line(self) -> str:
        """One line for systemd's STATUS= and the technicians."""
        uplink = self.uplink
        link = "link up" if uplink is not None and uplink.connected else "link down"
        fix = self.last_fix
        gnss = f"GNSS {fix.mode}D" if fix is not None and fix.has_position else f"GNSS {self.gnss_state.value}"
        alert = self.emergency_id()
        line = f"{link}, {gnss}, outbox {self.outbox.depth}"
        if alert:
            line += f", EMERGENCY {alert[:8]}"
        return line + (f", faults {len(self.faults)}" if self.faults else "")

    def health_fields(self) -> dict[str, Any]:
        uplink = self.uplink
        now = self.clock.monotonic()
        link: dict[str, Any] = {"connected": bool(uplink and uplink.connected)}
        if uplink is not None:
            link.update(broker=uplink.broker, reconnects=uplink.reconnects, last_error=uplink.last_error,
                        connected_for_s=None if uplink.connected_since is None else now - uplink.connected_since)
        gnss = {"state": self.gnss_state.value, "mode": self.last_fix.mode if self.last_fix else None,
                "fix_age_s": None if self.last_position_at is None else round(now - self.last_position_at, 1),
                "sats_used": self.last_fix.sats_used if self.last_fix else None}
        gnss.update(self.gnss_info())
        system = snapshot(self.cfg.state_dir, self.clock.system_synced())
        return {"system": system,"uptime_s": round(now - self.started, 1), "agent_version": __version__,
                "outbox": self.outbox.stats(), "gnss": gnss, "link": link, "inputs": dict(self.inputs),
                "faults": sorted(set(self.faults) | set(self.outbox.faults) | ({"lab_mode"} if self.cfg.mqtt.lab_mode
                                                                                  else set())),
                "lab_mode": self.cfg.mqtt.lab_mode}

    def send_health(self) -> None:
        fields = self.health_fields()
        self.send(Health(**self.envelope(), **fields), Priority.HEALTH)

    def on_control(self, req: ControlRequest) -> None:
        handler = self.handlers.get(req.cmd)
        if handler is None:
            req.finish({"ok": False, "error": f"unknown command {req.cmd!r}"})
            return
        try:
            handler(req)
        except Exception as exc:  # a bad request must not take the daemon down
            log.exception("control command %s failed", req.cmd)
            req.finish({"ok": False, "error": str(exc)})

    def _control_hang(self, req: ControlRequest) -> None:
        """Simulation only: make the core loop hang, as a bug would (watchdog tests)."""
        req.finish({"ok": True})
        self.hang = True

    def _control_status(self, req: ControlRequest) -> None:
        state = self.health_fields()
        state["vehicle"] = self.cfg.vehicle.model_dump()
        state["status_line"] = self.status_line()
        state["inputs"] = dict(self.inputs)
        state["emergency"] = self.emergency_id()
        req.finish({"ok": True, "status": state})
