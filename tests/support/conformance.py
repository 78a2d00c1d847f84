"""Compare our decoder with gpsd's output on a real receiver capture.

A capture ``NAME.log`` comes with ``NAME.log.chk``: what gpsd printed. gpsd's
fix for an epoch is the last TPV of the highest mode carrying that time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from agent.gnss_decode import iter_fixes
from drivers.gnss import Fix, NmeaDecoder

COORD_TOLERANCE = 1e-6


def capture_date(log: Path) -> date | None:
    for raw in log.read_bytes().splitlines():
        if not raw.startswith(b"#"):
            break
        found = re.match(rb"#\s*Date:\s*(\d{4}-\d{2}-\d{2})", raw)
        if found:
            return date.fromisoformat(found.group(1).decode())
    return None


def decode_capture(log: Path) -> list[Fix]:
    """Exactly what ``patrol-agent gnss decode --date <header date>`` does."""
    with log.open("rb") as stream:
        return list(iter_fixes(stream, NmeaDecoder(default_day=capture_date(log))))


def _ms(iso: str) -> int:
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return round(moment.timestamp() * 1000)


def gpsd_epochs(chk: Path) -> dict[int, dict[str, object]]:
    """time (ms) -> gpsd's fix for that epoch (its best TPV)."""
    best: dict[int, dict[str, object]] = {}
    for line in chk.read_text(errors="replace").splitlines():
        if '"class":"TPV"' not in line:
            continue
        tpv = json.loads(line)
        if "time" not in tpv:
            continue
        key = _ms(tpv["time"])
        if key not in best or tpv.get("mode", 0) >= best[key].get("mode", 0):
            best[key] = tpv
    return best


@dataclass
class Comparison:
    name: str
    gpsd_fixes: int = 0  # gpsd epochs in mode 2/3
    matched: int = 0  # ...that we emitted at the same ms with lat/lon within tolerance
    mode_agree: int = 0  # ...of the matched, same mode
    false_positions: int = 0  # our positions at a time gpsd says no fix
    ours: int = 0
    misses: list[str] = field(default_factory=list)

    @property
    def match_ratio(self) -> float:
        return self.matched / self.gpsd_fixes if self.gpsd_fixes else 1.0

    @property
    def mode_ratio(self) -> float:
        return self.mode_agree / self.matched if self.matched else 1.0

    def line(self) -> str:
        return (
            f"{self.name:28s} gpsd 2D/3D {self.gpsd_fixes:4d}  matched {self.matched:4d} "
            f"({self.match_ratio:7.2%})  mode agrees {self.mode_agree:4d} ({self.mode_ratio:7.2%})  "
            f"positions where gpsd has no fix {self.false_positions}"
        )


def compare(log: Path) -> Comparison:
    chk = log.with_name(log.name + ".chk")
    reference = gpsd_epochs(chk)
    ours = {f.time_ms: f for f in decode_capture(log) if f.time_ms is not None}
    result = Comparison(log.stem, ours=len(ours))
    for when, tpv in sorted(reference.items()):
        mode = int(tpv.get("mode", 0))  # type: ignore[call-overload]
        fix = ours.get(when)
        if mode < 2:
            if fix is not None and fix.has_position:
                result.false_positions += 1
                result.misses.append(f"{tpv['time']}: we have a position, gpsd mode {mode}")
            continue
        result.gpsd_fixes += 1
        if fix is None or not fix.has_position:
            result.misses.append(f"{tpv['time']}: gpsd mode {mode}, ours {fix}")
            continue
        assert fix.lat is not None and fix.lon is not None
        if abs(fix.lat - float(tpv["lat"])) > COORD_TOLERANCE or abs(  # type: ignore[arg-type]
            fix.lon - float(tpv["lon"])  # type: ignore[arg-type]
        ) > COORD_TOLERANCE:
            result.misses.append(f"{tpv['time']}: position differs: {tpv} vs {fix}")
            continue
        result.matched += 1
        if fix.mode == mode:
            result.mode_agree += 1
        else:
            result.misses.append(f"{tpv['time']}: mode gpsd {mode} ours {fix.mode}")
    return result
