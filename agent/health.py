"""Health: the unit's own state, for dispatch (``health``, ``status``), systemd and the technicians.

A component on the core thread. Every ``health.interval_s`` it sends a
health message; it builds the retained ``status`` messages (online at each
link-up, offline as the last will and at shutdown); it keeps systemd's
STATUS= line current; and it answers the control socket's ``status``
request (``patrol-agent status`` and ``monitor``) with the same figures,
plus the position itself (the control socket is local and 0600/0660).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.alerts import Alerts
from agent.buttons import Buttons
from agent.config import AgentConfig
from agent.control import ControlRequest
from agent.events import ConfigApplied, Event
from agent.forwarder import Forwarder
from agent.messages import Health as HealthMessage
from agent.messages import Priority, Status
from agent.notify import Notifier
from agent.positioning import Positioning
from agent.supervisor import Supervisor
from agent.system import snapshot
from agent.unit import Faults, Sender

STATUS_EVERY_S = 10.0


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.0f} h"


def status_message(sender: Sender, cfg: AgentConfig, state: str, reason: str | None = None, *,
                   connection: int | None = None) -> bytes:
    """The retained status; the uplink sets ``connection`` in the will and the last words
    (``agent.uplink_client.for_connection``), the forwarder in the online status."""
    status = Status(**sender.envelope(stored=False), state=state, agent_version=__version__, unit=cfg.vehicle.unit,
                    directorate=cfg.vehicle.directorate, reason=reason, connection=connection)
    return status.model_dump_json().encode()


class Health:
    def __init__(self, cfg: AgentConfig, *, sender: Sender, faults: Faults, positioning: Positioning,
                 forwarder: Forwarder, alerts: Alerts, buttons: Buttons, supervisor: Supervisor,
                 notifier: Notifier, gnss_counters: Callable[[], dict[str, int]], started: float,
                 gpio: dict[str, Any] | None = None, extra_faults: Callable[[], set[str]] = set) -> None:
        self._cfg = cfg
        self._sender = sender
        self._faults = faults
        self._positioning = positioning
        self._forwarder = forwarder
        self._alerts = alerts
        self._buttons = buttons
        self._supervisor = supervisor
        self._notifier = notifier
        self._gnss_counters = gnss_counters
        self._started = started
        self._extra_faults = extra_faults
        self._gpio = gpio or {}
        self._next_health = started + cfg.health.interval_s
        self._next_status = float("-inf")

    def handle(self, event: Event, now: float) -> None:
        match event:
            case ControlRequest(cmd="status"):
                event.finish({"ok": True, "status": self.status(now)})
            case ConfigApplied(cfg=cfg):
                self._cfg = cfg
            case _:
                pass

    def tick(self, now: float) -> None:
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            self._notifier.status(self.status_line(now))
        if now >= self._next_health:
            self._next_health = now + self._cfg.health.interval_s
            sender = self._sender
            sender.send(HealthMessage(**sender.envelope(), **self.fields(now)), Priority.HEALTH)

    def status_line(self, now: float) -> str:
        """One line for systemd's STATUS= and the technicians."""
        link = "link up" if self._forwarder.link.up else "link down"
        where = self._positioning
        live = where.live(now)
        age = where.position_age(now)
        if live is not None and age is not None:
            gnss = f"GNSS {live.mode}D {age:.1f} s old"
        else:
            state = "no fix" if where.state.value == "fix" else where.state.value.replace("_", " ")
            gnss = f"GNSS {state}" + ("" if age is None else f", last fix {_ago(age)} ago")
        line = f"{link}, {gnss}, outbox {self._sender.outbox.depth}"
        alert = self._alerts.emergency_id
        if alert:
            line += f", EMERGENCY {alert[:8]}"
        if "gpio_unavailable" in self._faults:
            line += ", NO GPIO: PANIC BUTTONS OFF"
        elif "gpio_fallback" in self._faults:
            line += f", GPIO FALLBACK ({self._gpio.get('factory')})"
        if self._cfg.simulation:
            line += ", SIMULATION"
        faults = self.fault_codes()
        return line + (f", faults {len(faults)}" if faults else "")

    def fault_codes(self) -> list[str]:
        codes = set(self._faults.open) | set(self._sender.outbox.faults) | self._extra_faults()
        if self._cfg.mqtt.lab_mode:
            codes.add("lab_mode")
        return sorted(codes)

    def fields(self, now: float) -> dict[str, Any]:
        link = self._forwarder.link
        where = self._positioning
        fix = where.last_fix
        live = where.live(now)
        gnss: dict[str, Any] = {
            "state": where.state.value, "mode": live.mode if live else 1,
            "fix_age_s": None if where.last_position_at is None else round(now - where.last_position_at, 1),
            "sats_used": fix.sats_used if fix else None,
        }
        gnss.update(self._gnss_counters())
        return {
            "system": snapshot(self._cfg.state_dir, self._sender.clock.system_synced()),
            "uptime_s": round(now - self._started, 1), "agent_version": __version__,
            "outbox": self._sender.outbox.stats(), "gnss": gnss,
            "link": {"connected": link.up, "broker": link.broker, "protocol": link.protocol,
                     "reconnects": link.reconnects, "last_error": link.last_error,
                     "connected_for_s": None if link.up_since is None else round(now - link.up_since, 1)},
            "inputs": self._buttons.inputs(), "faults": self.fault_codes(), "lab_mode": self._cfg.mqtt.lab_mode,
            "simulation": self._cfg.simulation, "gpio_factory": self._gpio.get("factory"),
        }

    def _time_fields(self) -> dict[str, Any]:
        clock = self._sender.clock
        when, source = clock.now()
        return {"now": when.isoformat(), "source": source.value, "system_synced": clock.system_synced(),
                "receiver_times_refused": clock.refused}

    def status(self, now: float) -> dict[str, Any]:
        """What ``patrol-agent status`` and ``monitor`` show."""
        state = self.fields(now)
        where = self._positioning
        fix = where.last_position_fix
        if fix is not None and where.last_position_at is not None:
            state["gnss"]["fix"] = {
                "lat": fix.lat, "lon": fix.lon, "alt_msl": fix.alt_msl, "speed_mps": fix.speed_mps,
                "course_deg": fix.course_deg, "hdop": fix.hdop, "sats_used": fix.sats_used, "mode": fix.mode,
                "fix_time": fix.time_iso, "age_s": round(now - where.last_position_at, 1),
                "live": where.live(now) is fix,
            }
        state["time"] = self._time_fields()
        emergency = self._alerts.emergency
        if emergency is not None:
            raised = datetime.fromisoformat(emergency.raised_at)
            age = (self._sender.clock.now()[0] - raised.astimezone(UTC)).total_seconds()
            state["emergency"] = {"alert_id": emergency.alert_id, "state": emergency.state,
                                  "raised_at": emergency.raised_at, "age_s": round(age, 1)}
        else:
            state["emergency"] = None
        state["vehicle"] = self._cfg.vehicle.model_dump()
        state["status_line"] = self.status_line(now)
        state["threads"] = self._supervisor.snapshot()
        state["faults_detail"] = dict(self._faults.open)
        state["gpio"] = self._gpio
        return state
