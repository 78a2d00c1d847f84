"""The MQTT topic tree of one vehicle. Every topic sits under its own id.

``<prefix>/<vehicle_id>/...``, so that a broker ACL with the certificate
identity as username (``pattern write patrol/%u/position``...) confines each
vehicle to its own topics.
"""

from __future__ import annotations

from dataclasses import dataclass

OUTBOUND = ("position", "alert", "status", "health", "event", "reply")
INBOUND = ("cmd", "alert/ack")


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    vehicle_id: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.vehicle_id}"

    # vehicle -> dispatch
    @property
    def position(self) -> str:
        return f"{self.base}/position"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def health(self) -> str:
        return f"{self.base}/health"

    @property
    def event(self) -> str:
        return f"{self.base}/event"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    # dispatch -> vehicle
    @property
    def command(self) -> str:
        return f"{self.base}/cmd"

    @property
    def alert_ack(self) -> str:
        return f"{self.base}/alert/ack"

    def for_kind(self, kind: str) -> str:
        return {"position": self.position, "alert": self.alert, "status": self.status, "health": self.health,
                "event": self.event, "reply": self.reply}[kind]
