"""Dispatch's audit of a capture: per vehicle and boot, the messages that never arrived and those that came twice.

Runs in the CLI process (``patrol-agent dispatch audit FILE``), an example
for dispatch integrators of what (boot, seq) proves (``docs/mqtt-api.md``).

A capture is JSON lines, one received message each: the object
``mosquitto_sub -F %J`` prints (``{"topic": ..., "payload": {...}, ...}``),
which ``patrol-agent watch --capture FILE`` also writes, or the vehicle's
message itself. Every message the vehicle stores carries (boot, seq), seq
contiguous from 1 within its boot, so within one boot:

- a seq missing between 1 and the highest one received is a message that
  was produced and never made durable (a kill or power cut within the
  commit window, telemetry dropped from a full RAM ring), or evicted by the
  outbox's bounds (counted in health); anything after the last received
  seq of a boot cannot be seen;
- the same (boot, seq) twice with the same ``msg_id`` is a duplicate
  (delivery is at-least-once); with another ``msg_id`` it is a number given
  twice: a fault of the vehicle.

The retained status carries no seq and is not audited; schema 1 messages
(before boot numbers) are counted apart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any


@dataclass
class Gap:
    start: int
    end: int
    received_after: int  # messages of the boot received with a higher seq

    @property
    def missing(self) -> int:
        return self.end - self.start + 1


@dataclass
class Boot:
    boot: int
    received: int = 0
    first: int = 0
    last: int = 0
    gaps: list[Gap] = field(default_factory=list)
    duplicates: int = 0
    reused: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gaps"] = [{"from": g.start, "to": g.end, "missing": g.missing, "received_after": g.received_after}
                        for g in self.gaps]
        return data


@dataclass
class Report:
    vehicles: dict[str, list[Boot]] = field(default_factory=dict)
    lines: int = 0
    unreadable: int = 0
    legacy: int = 0  # schema 1: no boot number
    unsequenced: int = 0  # the retained status: state, not stream

    @property
    def missing(self) -> int:
        return sum(g.missing for boots in self.vehicles.values() for b in boots for g in b.gaps)

    @property
    def reused(self) -> int:
        return sum(len(b.reused) for boots in self.vehicles.values() for b in boots)

    def as_dict(self) -> dict[str, Any]:
        return {"vehicles": {v: [b.as_dict() for b in boots] for v, boots in self.vehicles.items()},
                "lines": self.lines, "unreadable": self.unreadable, "legacy": self.legacy,
                "unsequenced": self.unsequenced, "missing": self.missing, "reused": self.reused}


def _message(line: str) -> dict[str, Any] | None:
    try:
        item = json.loads(line)
    except ValueError:
        return None
    if isinstance(item, dict) and "topic" in item and "payload" in item:
        item = item["payload"]
        if isinstance(item, str):
            try:
                item = json.loads(item)
            except ValueError:
                return None
    return item if isinstance(item, dict) and "vehicle_id" in item else None


def audit(lines: IO[str]) -> Report:
    report = Report()
    seen: dict[tuple[str, int], dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    copies: dict[tuple[str, int], int] = defaultdict(int)
    for line in lines:
        if not line.strip():
            continue
        report.lines += 1
        message = _message(line)
        if message is None:
            report.unreadable += 1
            continue
        boot, seq = message.get("boot"), message.get("seq")
        if boot is None:
            report.legacy += 1
        elif seq is None:
            report.unsequenced += 1
        elif isinstance(boot, int) and isinstance(seq, int) and seq >= 1:
            key = (str(message["vehicle_id"]), boot)
            seen[key][seq].add(str(message.get("msg_id")))
            copies[key] += 1
        else:
            report.unreadable += 1
    for (vehicle, boot), seqs in sorted(seen.items()):
        numbers = sorted(seqs)
        entry = Boot(boot, received=len(numbers), first=numbers[0], last=numbers[-1],
                     duplicates=copies[(vehicle, boot)] - len(numbers),
                     reused=[s for s in numbers if len(seqs[s]) > 1])
        expected = 1
        for index, seq in enumerate(numbers):
            if seq > expected:
                entry.gaps.append(Gap(expected, seq - 1, received_after=len(numbers) - index))
            expected = seq + 1
        report.vehicles.setdefault(vehicle, []).append(entry)
    return report


def text(report: Report) -> str:
    out = []
    for vehicle, boots in report.vehicles.items():
        out.append(vehicle)
        for b in boots:
            missing = sum(g.missing for g in b.gaps)
            line = (f"  boot {b.boot}: {b.received} received (seq {b.first}-{b.last}), "
                    f"{missing} missing in {len(b.gaps)} gap{'s' if len(b.gaps) != 1 else ''}, "
                    f"{b.duplicates} duplicate{'s' if b.duplicates != 1 else ''}")
            if b.reused:
                line += f", NUMBERS REUSED: {', '.join(map(str, b.reused[:10]))}"
            out.append(line)
            for g in b.gaps:
                span = f"{g.start}-{g.end}" if g.end > g.start else f"{g.start}"
                out.append(f"    missing {span} ({g.missing}), {g.received_after} received after it in this boot")
    count = sum(len(boots) for boots in report.vehicles.values())
    gaps = sum(len(b.gaps) for boots in report.vehicles.values() for b in boots)
    out.append(f"{len(report.vehicles)} vehicle{'s' if len(report.vehicles) != 1 else ''}, {count} boots: "
               f"{report.missing} missing in {gaps} gaps, {report.reused} numbers reused; "
               f"{report.unsequenced} status messages (no seq), {report.legacy} of schema 1, "
               f"{report.unreadable} lines unreadable")
    return "\n".join(out)


def run(path: Path, *, as_json: bool = False, out: IO[str]) -> int:
    """Exit status: 0 nothing missing or reused, 1 otherwise."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        report = audit(lines)
    out.write((json.dumps(report.as_dict(), indent=1) if as_json else text(report)) + "\n")
    return 0 if report.missing == 0 and report.reused == 0 else 1
