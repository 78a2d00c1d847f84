"""Messages: everything the vehicle sends, and what it accepts from dispatch.

Pydantic models, the single source of the interface: ``docs/mqtt-api.md``,
``docs/asyncapi.yaml`` and ``docs/schemas/*.json`` are generated from them
(``make api-docs``). Built by the core thread; serialised once, when they
enter the outbox.

Every message the vehicle sends carries the envelope: schema version,
vehicle id, the boot it was produced in, a unique message id, the time it
describes and where that time came from. Every message that goes through
the outbox (all but the retained status, which is state, not history) also
carries ``seq``, contiguous from 1 within its boot, and ``historical`` (set
when it is published: true for telemetry that waited in the backlog while
the link was down). A gap in (vehicle_id, boot, seq) at dispatch is a
message that was produced and never made durable; dispatch drops
duplicates by (vehicle_id, boot, seq): delivery is at-least-once.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

SCHEMA_VERSION = 2


def _iso_ms(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


UtcTime = Annotated[datetime, PlainSerializer(_iso_ms, return_type=str, when_used="json")]


class TimeSource(StrEnum):
    GNSS = "gnss"  # the receiver's UTC, carried forward on the monotonic clock
    SYSTEM_SYNCED = "system_synced"  # the system clock, synchronised (NTP)
    SYSTEM_UNSYNCED = "system_unsynced"  # the system clock, not known to be right (no RTC on a Pi)


class Priority:
    """Outbox order: lower goes first. Alerts jump every queue."""

    ALERT = 0
    REPLY = 1
    EVENT = 2
    POSITION = 3
    HEALTH = 4


class Envelope(BaseModel):
    """What every message from the vehicle carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[2] = 2
    kind: str
    vehicle_id: str
    boot: int = Field(ge=1, description="the vehicle's start count: one more at every start of the agent")
    msg_id: str = Field(description="unique message id (UUID)")
    time: UtcTime = Field(description="the moment the message describes, UTC")
    time_source: TimeSource


class Message(Envelope):
    """A message of the vehicle's stream: kept in its outbox until the broker acknowledged it."""

    seq: int = Field(ge=1, description="contiguous from 1 within the boot: a gap is a message never made durable")
    historical: bool = Field(
        default=False, description="set on publishing: waited in the backlog while the link was down"
    )


class PositionSource(StrEnum):
    LIVE = "live"  # a fix of the current epoch
    LAST_KNOWN = "last_known"  # the last fix, ``age_s`` old
    NONE = "none"  # no fix since start


class Position(BaseModel):
    """A GNSS position in decimal degrees (WGS84). Never 0,0 for "unknown": absent instead."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    alt_msl: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    mode: Literal[2, 3]
    sats_used: int | None = None
    hdop: float | None = None
    quality: int | None = None
    fix_time: UtcTime | None = Field(default=None, description="GNSS time of the fix")


class LastKnown(BaseModel):
    """Where the vehicle was last known to be, and how long ago, when there is no live fix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fix: Position
    age_s: float = Field(ge=0, description="seconds since that fix")


class PositionReport(Message):
    """``<prefix>/<vehicle>/position``: where the vehicle is (or that it does not know)."""

    kind: Literal["position"] = "position"
    reason: Literal[
        "interval", "distance", "heading", "speed", "fix_lost", "fix_regained",
        "ignition_on", "ignition_off", "emergency", "requested", "start",
    ]
    fix: Position | None = Field(description="the live fix; null when there is none (no fix, or the last one is "
                                              "older than gnss.max_fix_age_s): never a stale fix")
    gnss_mode: Literal[1, 2, 3] = Field(description="the live fix's mode; 1 when there is no live fix")
    last_known: LastKnown | None = Field(default=None, description="with fix null: the last fix and its age")
    alert_id: str | None = Field(default=None, description="set while an emergency is open")


class BestPosition(BaseModel):
    """The best position known when an alert is raised, and how good it is."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: PositionSource
    age_s: float | None = Field(default=None, description="seconds since the fix (null with source none)")
    fix: Position | None = None


class AlertState(StrEnum):
    RAISED = "raised"
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    CANCELLED = "cancelled"
    UNACKNOWLEDGED = "unacknowledged"  # a test alarm nobody acknowledged within panic.test_timeout_s: it ends


class Alert(Message):
    """``<prefix>/<vehicle>/alert``: a panic alarm, re-published with its id until acknowledged."""

    kind: Literal["alert"] = "alert"
    alert_id: str
    state: AlertState
    trigger: str = Field(description="the input that raised it (button name), or 'test' / 'remote'")
    raised_at: UtcTime
    test: bool = Field(default=False, description="an installer's test alarm: no response needed")
    covert: bool = Field(default=False, description="the unit shows nothing locally (hostage/hijack)")
    position: BestPosition
    attempt: int = Field(default=1, ge=1, description="publication count for this alert id")
    note: str | None = None


class Status(Envelope):
    """``<prefix>/<vehicle>/status`` (retained; also the MQTT last will). State, not history: it is
    never stored in the outbox, so it carries no ``seq`` and never makes a gap."""

    kind: Literal["status"] = "status"
    state: Literal["online", "offline"]
    agent_version: str
    unit: str
    directorate: str
    reason: str | None = Field(default=None, description="offline: 'shutdown' or 'connection lost' (the will)")
    connection: int | None = Field(
        default=None, ge=1,
        description="the connection to the broker this status belongs to, numbered within the boot (increasing, "
                    "not contiguous): the online "
                    "status and the will of one connection carry the same number. Order statuses by (boot, "
                    "connection), offline after online; not by time: a will is made when its connection is "
                    "opened, before that connection's online status")


class InputEvent(Message):
    """``<prefix>/<vehicle>/event``: an input changed, or a fault was raised or cleared."""

    kind: Literal["event"] = "event"
    event: Literal["input", "fault", "fault_cleared", "command_rejected", "config_reloaded"]
    name: str = Field(description="input name (ignition, door...) or fault code (outbox_corrupt...)")
    active: bool | None = None
    detail: str | None = None


class Health(Message):
    """``<prefix>/<vehicle>/health``: the unit's own state, periodically."""

    kind: Literal["health"] = "health"
    uptime_s: float
    agent_version: str
    outbox: dict[str, float | int | None]
    gnss: dict[str, float | int | str | None]
    link: dict[str, float | int | str | None]
    system: dict[str, float | int | str | bool | None] = {}
    inputs: dict[str, bool] = {}
    faults: list[str] = []
    lab_mode: bool = False
    simulation: bool = Field(default=False, description="simulated hardware: the real panic buttons are off")
    gpio_factory: str | None = Field(default=None, description="gpiozero pin factory in use (lgpio on a Pi)")


class CommandReply(Message):
    """``<prefix>/<vehicle>/reply``: the outcome of a command from dispatch."""

    kind: Literal["reply"] = "reply"
    command_id: str | None
    verb: str | None
    ok: bool
    detail: str | None = None




class AlertAck(BaseModel):
    """Dispatch -> vehicle on ``<prefix>/<vehicle>/alert/ack``: acknowledge or clear an alert."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alert_id: str = Field(min_length=1, max_length=64)
    action: Literal["acknowledge", "clear"]
    operator: str | None = Field(default=None, max_length=64)
    note: str | None = Field(default=None, max_length=500)


VEHICLE_MESSAGES: tuple[type[Envelope], ...] = (PositionReport, Alert, Status, InputEvent, Health, CommandReply)
