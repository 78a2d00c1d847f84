"""Messages planted in an outbox before the agent starts (a backlog, as after an outage).

Built from the interface's own models, so that the outbox's check of what
it reads back (:class:`agent.rows.RowCheck`) takes them as the vehicle's own.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from agent.config import OutboxConfig
from agent.messages import Alert, AlertState, BestPosition, PositionReport, PositionSource, Priority, TimeSource
from agent.outbox import Outbox

WHEN = datetime(2026, 1, 1, tzinfo=UTC)


def position(vehicle: str, boot: int, seq: int) -> bytes:
    report = PositionReport(vehicle_id=vehicle, boot=boot, seq=seq, msg_id=str(uuid.uuid4()), time=WHEN,
                            time_source=TimeSource.GNSS, reason="interval", fix=None, gnss_mode=1)
    return report.model_dump_json(exclude={"historical"}).encode()


def alert(vehicle: str, boot: int, seq: int, alert_id: str) -> bytes:
    message = Alert(vehicle_id=vehicle, boot=boot, seq=seq, msg_id=str(uuid.uuid4()), time=WHEN,
                    time_source=TimeSource.GNSS, alert_id=alert_id, state=AlertState.RAISED, trigger="driver",
                    raised_at=WHEN, position=BestPosition(source=PositionSource.NONE))
    return message.model_dump_json(exclude={"historical"}).encode()


def plant(state_dir: Path, vehicle: str, kinds: list[str], cfg: OutboxConfig | None = None,
          prefix: str = "patrol") -> list[tuple[str, int, int, str]]:
    """Messages of ``kinds`` ("position" or "alert") in the outbox, in that order, as one earlier boot;
    returns (kind, boot, seq, alert id or msg topic) of each."""
    box = Outbox(state_dir / "outbox.sqlite", cfg or OutboxConfig(max_messages=max(100, 2 * len(kinds)),
                                                                      max_bytes=1 << 31))
    box.open()
    planted = []
    for kind in kinds:
        seq = box.seq.take()
        boot = box.seq.boot
        if kind == "alert":
            alert_id = str(uuid.uuid4())
            box.accept(seq, Priority.ALERT, f"{prefix}/{vehicle}/alert", alert(vehicle, boot, seq, alert_id))
            planted.append((kind, boot, seq, alert_id))
        else:
            box.accept(seq, Priority.POSITION, f"{prefix}/{vehicle}/position", position(vehicle, boot, seq))
            planted.append((kind, boot, seq, ""))
    box.flush()
    box.close()
    return planted
