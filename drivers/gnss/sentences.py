"""Sentences: one validated NMEA line in, the facts it states out.

Pure functions, no thread of their own. Every line must carry a correct
checksum (pynmea2 parses with ``check=True``; a missing checksum is refused
before that). Fields are then read from the raw field list with our own
converters, because pynmea2's conversions hand back raw strings on bad input
and report 0,0 for a status-V RMC (see PITFALLS.md).

Any talker is accepted (GP, GN, GL, GA, GB, BD, GQ, QZ...). The position and
timing sentences RMC, GGA, GNS, GLL, GSA, VTG and ZDA are decoded; others with
a good checksum (GSV, GST, TXT, proprietary) are accepted and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

import pynmea2

KNOTS_TO_MPS = 1852.0 / 3600.0
KMH_TO_MPS = 1000.0 / 3600.0

_SHAPE = re.compile(r"\$([A-Z][A-Z0-9]{4,5}),[\x20-\x7e]*\*[0-9A-Fa-f]{2}")
DECODED = frozenset({"RMC", "GGA", "GNS", "GLL", "GSA", "VTG", "ZDA"})


class SentenceError(ValueError):
    """A line that is not a well-formed, correctly checksummed sentence."""


class ChecksumMismatch(SentenceError):
    """The checksum is present but wrong."""


@dataclass(slots=True)
class Observation:
    """What one sentence says. ``None`` means the sentence does not say."""

    kind: str  # sentence type: RMC, GGA...
    tod_ms: int | None = None  # UTC time of day, milliseconds
    day: date | None = None
    valid: bool | None = None  # explicit fix / no-fix statement
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    quality: int | None = None
    sats_used: int | None = None
    hdop: float | None = None
    gsa_mode: int | None = None


def xor_bytes(data: bytes) -> int:
    """XOR of all bytes, folded as one big integer: a few C-level steps
    instead of a Python loop over ~70 characters."""
    value = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        value = (value >> (half * 8)) ^ (value & ((1 << (half * 8)) - 1))
        width = half
    return value


def checksum_ok(line: str) -> bool:
    body, _, given = line[1:].rpartition("*")
    try:
        return xor_bytes(body.encode("ascii")) == int(given, 16)
    except (ValueError, UnicodeEncodeError):
        return False


def parse_line(line: str) -> Observation | None:
    """Validate ``line``; return its observation, or None if it is skipped.

    Raises :class:`ChecksumMismatch` or :class:`SentenceError` for lines to be
    counted and dropped.
    """
    shape = _SHAPE.fullmatch(line)
    if shape is None:
        raise SentenceError("not an NMEA sentence with checksum")
    address = shape.group(1)
    kind = address[2:] if len(address) == 5 and not address.startswith("P") else ""
    if kind not in DECODED:
        if not checksum_ok(line):
            raise ChecksumMismatch("checksum does not match")
        return None  # accepted, nothing we use (GSV, GST, TXT, proprietary...)
    try:
        msg = pynmea2.parse(line, check=True)
    except pynmea2.ChecksumError:
        raise ChecksumMismatch("checksum does not match") from None
    except pynmea2.ParseError as exc:
        raise SentenceError(str(exc)) from None
    try:
        return _DECODERS[kind](msg.data)
    except (ValueError, IndexError) as exc:
        raise SentenceError(f"{kind}: {exc}") from None


# --- field converters: empty -> None, nonsense -> ValueError ----------------


def _float(text: str) -> float | None:
    return float(text) if text else None


def _int(text: str) -> int | None:
    return int(text) if text else None


def _field(data: list[str], index: int) -> str:
    return data[index].strip() if index < len(data) else ""


def tod_ms(text: str) -> int | None:
    """``hhmmss[.sss]`` -> milliseconds of the day (rounded, not truncated)."""
    if not text:
        return None
    if len(text) < 6 or not text[:6].isdigit():
        raise ValueError(f"bad time {text!r}")
    hours, minutes = int(text[0:2]), int(text[2:4])
    seconds = float(text[4:])
    if hours > 23 or minutes > 59 or not 0 <= seconds < 61:
        raise ValueError(f"bad time {text!r}")
    return (hours * 3600 + minutes * 60) * 1000 + round(seconds * 1000)


def coordinate(value: str, hemisphere: str, max_degrees: int) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` plus N/S/E/W -> signed decimal degrees."""
    if not value:
        return None
    dot = value.find(".")
    head = len(value) if dot < 0 else dot
    if head < 3 or not value[:head].isdigit():
        raise ValueError(f"bad coordinate {value!r}")
    degrees = int(value[: head - 2])
    minutes = float(value[head - 2 :])
    if minutes >= 60 or degrees + minutes / 60 > max_degrees:
        raise ValueError(f"coordinate out of range {value!r}")
    result = degrees + minutes / 60
    if hemisphere in ("S", "W"):
        return -result
    if hemisphere in ("N", "E"):
        return result
    raise ValueError(f"bad hemisphere {hemisphere!r}")


def _position(data: list[str], at: int) -> tuple[float | None, float | None]:
    lat = coordinate(_field(data, at), _field(data, at + 1), 90)
    lon = coordinate(_field(data, at + 2), _field(data, at + 3), 180)
    if lat is None or lon is None:
        return None, None
    return lat, lon


def _rmc(data: list[str]) -> Observation:
    status = _field(data, 1)
    mode_indicator = _field(data, 11)
    valid = status == "A" and mode_indicator != "N"
    obs = Observation("RMC", tod_ms=tod_ms(_field(data, 0)), valid=valid)
    raw_date = _field(data, 8)
    if raw_date:
        if len(raw_date) != 6 or not raw_date.isdigit():
            raise ValueError(f"bad date {raw_date!r}")
        obs.day = date(2000 + int(raw_date[4:6]), int(raw_date[2:4]), int(raw_date[0:2]))
    if valid:
        obs.lat, obs.lon = _position(data, 2)
        obs.valid = obs.lat is not None
        knots = _float(_field(data, 6))
        obs.speed_mps = None if knots is None else knots * KNOTS_TO_MPS
        obs.course_deg = _float(_field(data, 7))
    return obs


def _gga(data: list[str]) -> Observation:
    quality = _int(_field(data, 5))
    obs = Observation("GGA", tod_ms=tod_ms(_field(data, 0)), quality=quality)
    obs.valid = bool(quality)
    obs.sats_used = _int(_field(data, 6))
    obs.hdop = _float(_field(data, 7))
    if obs.valid:
        obs.lat, obs.lon = _position(data, 1)
        obs.valid = obs.lat is not None
        obs.alt_msl = _float(_field(data, 8))
    return obs


def _gns(data: list[str]) -> Observation:
    modes = _field(data, 5)
    valid = any(char not in "NV" for char in modes)
    obs = Observation("GNS", tod_ms=tod_ms(_field(data, 0)), valid=valid)
    obs.sats_used = _int(_field(data, 6))
    obs.hdop = _float(_field(data, 7))
    if valid:
        obs.lat, obs.lon = _position(data, 1)
        obs.valid = obs.lat is not None
        obs.alt_msl = _float(_field(data, 8))
    return obs


def _gll(data: list[str]) -> Observation:
    valid = _field(data, 5) == "A" and _field(data, 6) != "N"
    obs = Observation("GLL", tod_ms=tod_ms(_field(data, 4)), valid=valid)
    if valid:
        obs.lat, obs.lon = _position(data, 0)
        obs.valid = obs.lat is not None
    return obs


def _gsa(data: list[str]) -> Observation:
    mode = _int(_field(data, 1))
    if mode is not None and mode not in (1, 2, 3):
        raise ValueError(f"bad GSA mode {mode}")
    return Observation("GSA", gsa_mode=mode, hdop=_float(_field(data, 15)))


def _vtg(data: list[str]) -> Observation:
    obs = Observation("VTG")
    if _field(data, 1) in ("T", "") and len(data) >= 8:  # NMEA 2.3+: value,unit pairs
        if _field(data, 8) == "N":
            return obs
        course, knots, kmh = _field(data, 0), _field(data, 4), _field(data, 6)
    else:  # pre-2.3: true, magnetic, knots, km/h
        course, knots, kmh = _field(data, 0), _field(data, 2), _field(data, 3)
    obs.course_deg = _float(course)
    if knots:
        obs.speed_mps = float(knots) * KNOTS_TO_MPS
    elif kmh:
        obs.speed_mps = float(kmh) * KMH_TO_MPS
    return obs


def _zda(data: list[str]) -> Observation:
    obs = Observation("ZDA", tod_ms=tod_ms(_field(data, 0)))
    day, month, year = _field(data, 1), _field(data, 2), _field(data, 3)
    if day and month and year:
        obs.day = date(int(year), int(month), int(day))
    return obs


_DECODERS = {
    "RMC": _rmc,
    "GGA": _gga,
    "GNS": _gns,
    "GLL": _gll,
    "GSA": _gsa,
    "VTG": _vtg,
    "ZDA": _zda,
}
