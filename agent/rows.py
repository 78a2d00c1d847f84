"""Outbox rows: one stored message, how its payload is kept on disk, and how a row read back is checked.

Plain data and pure functions, used on the core thread.

- On disk a telemetry payload is deflated with a preset dictionary of the
  messages' own keys (codec ``Z1``): a 420-byte position takes ~90 bytes,
  which is most of what keeps the card's writes low while the link is
  down. The dictionary is part of the storage format: never edit
  ``_DICT_1``; a new one is a new codec. Alerts are stored as they are.
- Nothing read back from disk is trusted: :class:`RowCheck` accepts only a
  row this vehicle could have produced: a topic under its own prefix and a
  kind it publishes from the outbox, the priority of that kind, a payload
  that decodes and validates as that kind's message, for this vehicle, and
  carrying the (boot, seq) of its row id.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field

from pydantic import BaseModel, ValidationError

from agent.boot import split
from agent.messages import Alert, CommandReply, Health, InputEvent, PositionReport, Priority
from agent.topics import Topics

CODEC_Z1 = b"\x01Z"
MAX_PAYLOAD = 256 * 1024  # inflated: a stored message is a few KB at most
_DICT_1 = (
    b'"historical":false,"kind":"health","uptime_s":,"agent_version":"0.","outbox":{"depth":,"on_disk":,'
    b'"bytes":,"oldest_age_s":null,"evictions":0,"alerts":0,"in_flight":0,"commits":,"in_ram":0,"dropped":0,'
    b'"rejected":0},"gnss":{"state":"fix","mode":3,"fix_age_s":0.,"sats_used":},"link":{"connected":false,'
    b'"broker":"mqtts://","protocol":"5","reconnects":,"last_error":null,"connected_for_s":null},"system":{'
    b'"inputs":{"ignition":true},"faults":[],"lab_mode":false,"simulation":false,"gpio_factory":"lgpio"}'
    b'{"schema_version":2,"kind":"reply","command_id":"c-","verb":"ping","ok":true,"detail":null}'
    b'{"schema_version":2,"kind":"event","event":"input","name":"ignition","active":true,"detail":null}'
    b'{"schema_version":2,"kind":"event","event":"fault","name":"gnss_no_fix","active":true,"detail":"'
    b'"reason":"interval","fix":{"lat":42.6,"lon":23.3,"alt_msl":560.2,"speed_mps":13.4,"course_deg":109.8,'
    b'"mode":3,"sats_used":9,"hdop":0.9,"quality":1,"fix_time":"2026-11-30T08:14:03.200Z"},"gnss_mode":3,'
    b'"alert_id":null}'
    b'{"schema_version":2,"kind":"position","vehicle_id":"","boot":1,"seq":1,"msg_id":"","time":'
    b'"2026-11-30T08:14:03.200Z","time_source":"gnss","reason":"interval","fix":{"lat":42.6,"lon":23.3,'
    b'"alt_msl":560.2,"speed_mps":13.4,"course_deg":109.8,"mode":3,"sats_used":9,"hdop":0.9,"quality":1,'
    b'"fix_time":"2026-11-30T08:14:03.200Z"},"gnss_mode":3,"alert_id":null}'
)

#: what the outbox stores, by topic level: (message model, priority)
KINDS: dict[str, tuple[type[BaseModel], int]] = {
    "alert": (Alert, Priority.ALERT),
    "reply": (CommandReply, Priority.REPLY),
    "event": (InputEvent, Priority.EVENT),
    "position": (PositionReport, Priority.POSITION),
    "health": (Health, Priority.HEALTH),
}


@dataclass(slots=True, order=True)
class Row:
    """A message in the outbox; ``payload`` is its JSON without the closing ``historical`` flag."""

    priority: int
    id: int  # boot << 32 | seq
    topic: str = field(compare=False)
    payload: bytes = field(compare=False)
    accepted_at: float = field(compare=False)  # Unix time, as the unit's clock had it
    trusted: bool = field(default=False, compare=False)  # accepted_at is true UTC (agent.clock.Clock.stamp)

    @property
    def key(self) -> tuple[int, int]:
        return (self.priority, self.id)


def pack(payload: bytes) -> bytes:
    """The form a telemetry payload takes on disk."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15, 9, zdict=_DICT_1)
    return CODEC_Z1 + deflate.compress(payload) + deflate.flush()


def unpack(blob: bytes) -> bytes:
    """The payload of a stored blob (packed, or JSON as it is); ValueError when it is neither."""
    if blob.startswith(CODEC_Z1):
        inflate = zlib.decompressobj(-15, zdict=_DICT_1)
        try:
            payload = inflate.decompress(blob[len(CODEC_Z1):], MAX_PAYLOAD)
        except zlib.error as exc:
            raise ValueError(f"does not inflate: {exc}") from None
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError("truncated, or larger than a stored message can be")
        return payload
    if blob.startswith(b"{"):
        return blob
    raise ValueError("neither JSON nor a known codec")


class RowCheck:
    """Whether a row read back from disk is one this vehicle could have produced (see the module docstring)."""

    def __init__(self, topics: Topics) -> None:
        self._topics = topics
        self._base = topics.base + "/"

    def problem(self, row: Row) -> str | None:
        kind = row.topic[len(self._base):] if row.topic.startswith(self._base) else None
        if kind not in KINDS:
            return f"topic {row.topic[:80]!r} is not one this vehicle publishes from its outbox"
        model, priority = KINDS[kind]
        if row.priority != priority:
            return f"priority {row.priority} for a {kind}"
        text = row.payload[:-1] + b',"historical":false}'
        try:
            message = model.model_validate_json(text)
        except ValidationError as exc:
            return self._why(kind, text, exc, legacy=split(row.id)[0] == 0)
        if getattr(message, "vehicle_id", None) != self._topics.vehicle_id:
            return f"payload of another vehicle ({str(getattr(message, 'vehicle_id', ''))[:40]!r})"
        if (getattr(message, "boot", None), getattr(message, "seq", None)) != split(row.id):
            return f"payload names another message than its row ({split(row.id)})"
        return None

    def _why(self, kind: str, text: bytes, exc: ValidationError, *, legacy: bool) -> str | None:
        try:
            body = json.loads(text)
        except ValueError:
            return f"payload is not JSON (a {kind} expected)"
        if not isinstance(body, dict) or body.get("kind") != kind:
            return f"payload is not a {kind}"
        if body.get("vehicle_id") != self._topics.vehicle_id:
            return f"payload of another vehicle ({str(body.get('vehicle_id'))[:40]!r})"
        if legacy and body.get("schema_version") == 1 and "boot" not in body:
            return None  # written by the previous version before the upgrade: its own envelope, kept
        first = exc.errors()[0]
        return f"payload is not a valid {kind}: {'.'.join(map(str, first['loc']))}: {first['msg']}"[:200]
