"""Compare our decoder with gpsd's output on a receiver capture.

A capture ``NAME.log`` comes with ``NAME.log.chk``: what gpsd printed. gpsd's
fix for an epoch is the last TPV of the highest mode carrying that time.

Two documented differences are accounted for, never hidden:
- a simulated fix (gpsd's TPV ``status`` 8, or an epoch we decode as
  simulated: gpsd does not flag a GNS in simulator mode) is never a position
  for us (a patrol unit must not place a car from a simulator): such epochs
  are counted apart (``simulated``), and a position from us there is a false
  position;
- gpsd moves every NMEA date before 2017-01-01 forward by 1024 weeks
  (timebase.c, its leap-second check with the built-in leap second count),
  which we do not (epoch.py, rule 6): gpsd 3.27 only for a capture without a
  ``# Date:`` header (the header marks a regression log), gpsd 3.22 always
  (``gpsd_322=True``). There our epoch at ``t`` also answers for gpsd's
  ``t + 1024 weeks``.
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
WEEKS_1024_MS = 619_315_200_000
_DAY_MS = 86_400_000
GPSD_WKRO_BEFORE_MS = 1_483_228_800_000  # 2017-01-01, gpsd's leap second 18


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


def gpsd_epochs(chk: Path, verdict: str = "best") -> dict[int, dict[str, object]]:
    """time (ms) -> gpsd's fix for that epoch: ``best``, its last TPV of the highest mode (the shared
    captures' README); ``last``, its last TPV of that time."""
    best: dict[int, dict[str, object]] = {}
    for line in chk.read_text(errors="replace").splitlines():
        if '"class":"TPV"' not in line:
            continue
        tpv = json.loads(line)
        if "time" not in tpv:
            continue
        key = _ms(tpv["time"])
        if verdict == "last" or key not in best or tpv.get("mode", 0) >= best[key].get("mode", 0):
            best[key] = tpv
    return best


def gpsd_release(chk: Path) -> str | None:
    """The gpsd that wrote ``chk`` (tools/gpsd_oracle.py keeps its VERSION line first), if it says."""
    with chk.open(errors="replace") as lines:
        first = lines.readline()
    if '"class":"VERSION"' not in first:
        return None
    release = json.loads(first).get("release")
    return str(release) if release is not None else None


@dataclass
class Comparison:
    name: str
    gpsd_fixes: int = 0  # gpsd epochs in mode 2/3
    matched: int = 0  # ...that we emitted at the same ms with lat/lon within tolerance
    mode_agree: int = 0  # ...of the matched, same mode
    false_positions: int = 0  # our positions at a time gpsd says no fix (or a simulated one)
    simulated: int = 0  # gpsd 2D/3D epochs it marks simulated: never a position for us
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
            + (f"  simulated {self.simulated}" if self.simulated else "")
        )


def compare(log: Path, *, chk: Path | None = None, verdict: str = "best", gpsd_322: bool = False,
            time_of_day: bool = False) -> Comparison:
    """``chk``: gpsd's output (default ``NAME.chk`` beside the log); ``verdict``: see :func:`gpsd_epochs`;
    ``time_of_day``: match epochs by time of day only (streams whose dates gpsd mangles)."""
    chk = chk or log.with_name(log.name + ".chk")
    reference = gpsd_epochs(chk, verdict)
    week_rollover = gpsd_322 or capture_date(log) is None
    ours = {f.time_ms: f for f in decode_capture(log) if f.time_ms is not None}
    if time_of_day:
        reference = {when % _DAY_MS: tpv for when, tpv in sorted(reference.items())}
        ours = {when % _DAY_MS: fix for when, fix in ours.items()}
    result = Comparison(log.stem, ours=len(ours))

    def ours_at(when: int) -> Fix | None:
        fix = ours.get(when)
        if fix is None and week_rollover and when - WEEKS_1024_MS < GPSD_WKRO_BEFORE_MS:
            fix = ours.get(when - WEEKS_1024_MS)
        return fix

    for when, tpv in sorted(reference.items()):
        mode = int(tpv.get("mode", 0))  # type: ignore[call-overload]
        fix = ours_at(when)
        simulated = tpv.get("status") == 8 or (fix is not None and fix.simulated)
        if mode < 2 or simulated:
            if fix is not None and fix.has_position:
                result.false_positions += 1
                result.misses.append(f"{tpv['time']}: we have a position, gpsd mode {mode} {tpv.get('status')}")
            elif mode >= 2:
                result.simulated += 1
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


# --- generated streams (tests/fixtures/nmea/gpsd): where we differ from gpsd on purpose --------------------

_NO_FIX_KINDS = ("GGA", "RMC", "GLL", "GNS")


def _raw_fields(line: str) -> tuple[str, list[str]]:
    body = line[1 : line.rindex("*")] if "*" in line else line[1:]
    address, *fields = body.split(",")
    return address[2:], fields + [""] * 20


def _raw_time(kind: str, fields: list[str]) -> str:
    index = {"GGA": 0, "RMC": 0, "GNS": 0, "ZDA": 0, "GLL": 4}.get(kind)
    return "" if index is None else fields[index]


def documented_difference(lines: list[str]) -> str | None:
    """Why gpsd may report a fix in this epoch where we (by design) do not, read from the raw sentences
    alone, without our decoder: a simulator flag, a GP/GN GGA with fewer than 3 satellites used, or a
    sentence saying no fix (status not A, mode N, quality 0 or empty) beside one saying fix: there the order
    of the sentences decides (verdict.py), and where gpsd reports a fix and then withdraws it, or reads a
    quality-0 GGA's coordinates, we say no fix. None: a clean epoch, where we must agree."""
    no_fix: set[str] = set()
    says_fix: set[str] = set()
    few_sats = False
    for line in lines:
        kind, f = _raw_fields(line)
        if kind == "GGA":
            if f[5] == "8":
                return "simulated"
            (says_fix if f[5] not in ("", "0") else no_fix).add(kind)
            if line[1:3] in ("GP", "GN") and int(f[6] or 0) < 3:
                few_sats = True
        elif kind in ("RMC", "GLL"):
            status, mode = (f[1], f[11]) if kind == "RMC" else (f[5], f[6])
            if mode == "S":
                return "simulated"
            (says_fix if status == "A" and mode != "N" else no_fix).add(kind)
        elif kind == "GNS":
            if "S" in f[5]:
                return "simulated"
            if not f[5] or f[5][0] == "N":
                no_fix.add(kind)
        elif kind == "VTG" and f[8] == "S":
            return "simulated"
    if few_sats:
        return "fewer than 3 satellites used"
    if no_fix:
        return "a sentence says no fix"
    return None


def raw_epochs(log: Path) -> dict[int, list[str]]:
    """time of day (ms) -> the sentences of that epoch, grouped as the receiver sent them: a sentence
    without a time goes with the timed one before it."""
    epochs: dict[int, list[str]] = {}
    current: list[str] | None = None
    for raw in log.read_text(errors="replace").splitlines():
        if not raw.startswith("$"):
            continue
        kind, fields = _raw_fields(raw)
        text = _raw_time(kind, fields)
        if len(text) >= 6 and text[:6].isdigit():
            key = (int(text[0:2]) * 3600 + int(text[2:4]) * 60) * 1000 + round(float(text[4:]) * 1000)
            current = epochs.setdefault(key, [])
        if current is not None:
            current.append(raw)
    return epochs


@dataclass
class Differential:
    """Our decoder against gpsd on one generated stream."""

    name: str
    gpsd_fixes: int = 0  # gpsd 2D/3D epochs, simulated ones excepted
    clean: int = 0  # ... of them in epochs where no sentence says no fix, simulated or < 3 satellites
    clean_matched: int = 0
    matched: int = 0
    mode_agree: int = 0
    false_positions: int = 0
    documented: dict[str, int] = field(default_factory=dict)  # gpsd fix, ours not, and why (documented_difference)
    misses: list[str] = field(default_factory=list)


def differential(log: Path) -> Differential:
    """gpsd's verdict (``NAME.nmea.chk``, tools/gpsd_oracle.py) against ours, epoch by epoch."""
    base = compare(log)
    result = Differential(log.stem, gpsd_fixes=base.gpsd_fixes, matched=base.matched, mode_agree=base.mode_agree,
                          false_positions=base.false_positions, misses=list(base.misses))
    reference = gpsd_epochs(log.with_name(log.name + ".chk"))
    ours = {f.time_ms: f for f in decode_capture(log) if f.time_ms is not None}
    raw = raw_epochs(log)
    for when, tpv in reference.items():
        if int(tpv.get("mode", 0)) < 2 or tpv.get("status") == 8:  # type: ignore[call-overload]
            continue
        fix = ours.get(when) or ours.get(when - WEEKS_1024_MS)
        if fix is not None and fix.simulated:
            continue
        if fix is None and when + _DAY_MS in ours:
            reason: str | None = "gpsd keeps the old date after midnight"
        else:
            reason = documented_difference(raw.get(when % _DAY_MS, []))
        if reason is None:
            result.clean += 1
            if fix is not None and fix.has_position:
                result.clean_matched += 1
        elif fix is None or not fix.has_position:
            result.documented[reason] = result.documented.get(reason, 0) + 1
    return result
