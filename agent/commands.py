"""Remote commands: what dispatch may ask of a vehicle, and how every request is checked.

Runs on the core thread. A command arrives on ``<prefix>/<vehicle>/cmd`` as a
JSON object. It is checked before anything is done, in this order: size
(at most 4 KiB), UTF-8, JSON, not retained (a retained command would run
again at every reconnect), the envelope (pydantic: unknown fields, wrong
types, timestamps without a zone), this vehicle's id, the validity (issued
no later than now plus ``MAX_SKEW``, expiring after it was issued, for at
most an hour, and not yet expired), a verb from the allow-list, and that
verb's arguments (flat, typed, bounded). A command id already run within its
validity is answered as a duplicate by the remote-commands component.
Any failure raises :class:`CommandRejected`, which the core reports on the
vehicle's ``event`` and ``reply`` topics. Nothing here, or anywhere in the
agent, runs a shell.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from agent.errors import AgentError

MAX_COMMAND_BYTES = 4096
MAX_VALIDITY = timedelta(hours=1)
MAX_SKEW = timedelta(seconds=30)  # dispatch's clock may run this far ahead of the vehicle's
Scalar = str | int | float | bool | None


class CommandRejected(AgentError, ValueError):
    def __init__(self, reason: str, *, command_id: str | None = None, verb: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.command_id = command_id
        self.verb = verb


class Command(BaseModel):
    """Dispatch -> vehicle on ``<prefix>/<vehicle>/cmd``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    vehicle_id: str = Field(min_length=1, max_length=64)
    verb: str = Field(min_length=1, max_length=32)
    args: dict[str, Scalar] = Field(default_factory=dict, max_length=8,
                                    description="flat: no nesting; checked per verb")
    issued_at: AwareDatetime = Field(description="with a zone (Z or +hh:mm): local times are refused")
    expires_at: AwareDatetime


class _Args(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)  # "1" is not 1, true is not 1


class NoArgs(_Args):
    pass


class SetReportingArgs(_Args):
    interval_s: float = Field(ge=1, le=3600, description="report a position this often ...")
    duration_s: float = Field(ge=1, le=86400, description="... for this long, then back to the policy")


class AlertArgs(_Args):
    alert_id: str = Field(min_length=1, max_length=64)
    operator: str | None = Field(default=None, max_length=64)


VERBS: dict[str, type[_Args]] = {
    "ping": NoArgs,
    "report_position": NoArgs,
    "set_reporting": SetReportingArgs,
    "ack_alert": AlertArgs,
    "clear_alert": AlertArgs,
    "reload_config": NoArgs,
}
Verb = Literal["ping", "report_position", "set_reporting", "ack_alert", "clear_alert", "reload_config"]


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: with two "verb"s an auditor and the vehicle could read
    different commands."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _DuplicateKey(key[:32])
        found[key] = value
    return found


def parse(payload: bytes, *, retained: bool, vehicle_id: str, now: datetime) -> tuple[Command, _Args]:
    """The command and its checked arguments, or :class:`CommandRejected` saying why."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandRejected(f"too large: {len(payload)} bytes (at most {MAX_COMMAND_BYTES})")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandRejected("not UTF-8") from None
    try:
        raw = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as exc:
        raise CommandRejected(f"duplicate key {exc.args[0]!r}: ambiguous") from None
    except (ValueError, RecursionError):
        raise CommandRejected("not JSON") from None
    ident = raw.get("command_id") if isinstance(raw, dict) else None
    command_id = ident if isinstance(ident, str) and len(ident) <= 64 else None
    verb_raw = raw.get("verb") if isinstance(raw, dict) else None
    verb = verb_raw if isinstance(verb_raw, str) and len(verb_raw) <= 32 else None
    if retained:
        raise CommandRejected("retained commands are not accepted", command_id=command_id, verb=verb)
    try:
        command = Command.model_validate(raw)
    except ValidationError as exc:
        raise CommandRejected(f"invalid: {_first_error(exc)}", command_id=command_id, verb=verb) from None
    if command.vehicle_id != vehicle_id:
        raise CommandRejected("addressed to another vehicle", command_id=command_id, verb=verb)
    try:
        if command.issued_at > now + MAX_SKEW:
            raise CommandRejected(f"issued in the future ({command.issued_at.isoformat()})",
                                  command_id=command_id, verb=verb)
        if command.expires_at <= command.issued_at:
            raise CommandRejected("expires before it was issued", command_id=command_id, verb=verb)
        if command.expires_at - command.issued_at > MAX_VALIDITY:
            raise CommandRejected("valid for more than an hour", command_id=command_id, verb=verb)
        if command.expires_at <= now:
            raise CommandRejected("expired", command_id=command_id, verb=verb)
    except OverflowError:  # datetime arithmetic at the ends of the calendar
        raise CommandRejected("timestamps out of range", command_id=command_id, verb=verb) from None
    model = VERBS.get(command.verb)
    if model is None:
        raise CommandRejected(f"unknown verb {command.verb!r}", command_id=command_id, verb=verb)
    try:
        args = model.model_validate(command.args)
    except ValidationError as exc:
        raise CommandRejected(f"bad arguments: {_first_error(exc)}", command_id=command_id, verb=verb) from None
    return command, args


def _first_error(exc: ValidationError) -> str:
    first: dict[str, Any] = dict(exc.errors()[0])
    where = ".".join(str(p) for p in first["loc"]) or "payload"
    return f"{where}: {first['msg']}"[:160]
