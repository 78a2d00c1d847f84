"""Sentences: one validated NMEA line in, the facts it states out.

Pure functions, no thread of their own (called by the GNSS reader thread and
by ``gnss decode``). Every line must carry a correct checksum (a missing one
is refused). Fields are read from the raw field list with strict converters
of our own: pynmea2's conversions hand back raw strings on bad input and
report 0,0 for a status-V RMC (PITFALLS.md), and Python's ``float()`` takes
``nan``, ``inf``, ``1e999`` and ``1_0``.

Any talker is accepted (GP, GN, GL, GA, GB, BD, GQ, QZ...). RMC, GGA, GNS,
GLL, GSA, VTG, ZDA and Garmin's PGRMZ are decoded; other sentences with a
good checksum (GSV, GST, GBS, TXT, other proprietary ones) are accepted and
skipped.

Rules applied here, per sentence (gpsd 3.27's drivers/driver_nmea0183.c read
for each; where we differ it is said). What a sentence's statement means for
the epoch, in the order received, is :mod:`drivers.gnss.verdict`'s:

- Numbers: a numeric field is digits with an optional sign and decimal point,
  nothing else. NaN, Infinity, exponents or garbage in ANY numeric field,
  used by us or not, make the sentence invalid: it is counted and dropped,
  never half-used. (gpsd's ``safe_atof`` turns them into NaN and carries on.)
- Ranges: latitude <= 90, longitude <= 180, minutes < 60; altitude
  -1,000..100,000 m; speed >= 0; course 0..360; DOPs 0..999; satellites
  0..99; GGA quality 0..9. Out of range makes the sentence invalid.
- Dates: RMC ``ddmmyy`` and ZDA day/month/year must be a real calendar day;
  a ZDA year outside 1900..2200 is invalid (gpsd's bounds: year 9999 is
  refused). The century of a two-digit year is resolved in ``epoch.py``.
- What states a fix (``fix`` True), with coordinates present:
  RMC status A with a mode indicator other than N (gpsd takes only A: D or
  anything else is no fix); GGA quality 1..7 or
  9 (1 GPS, 2 DGPS, 3 PPS, 4 RTK, 5 float RTK, 6 estimated, 7 manual, 9 SBAS);
  GNS whose first mode character is not N (gpsd looks at the first only) and
  whose NMEA 4.1 navigation status is not U or V; GLL status A with a mode
  other than N.
- What states no fix (``fix`` False): RMC status other than A, or mode N;
  GGA quality 0; GNS mode N; GLL status V or mode N. An empty GGA quality
  (``fix`` None) is read as no fix by the verdict; a GNS with navigation
  status U/V states nothing (``fix`` None), as gpsd ignores it.
- ``alt_seen``: a GGA or GNS with coordinates and an altitude, whatever its
  quality: gpsd keeps that altitude, and it decides whether a later RMC or
  GLL of the epoch is 3D.
- ``unsure_cycle``: an RMC not valid without time or date, a GGA of quality 0
  without time (a Quectel's ``$GPRMC,,V,...``): gpsd stops trusting its end
  of cycle and reports after every sentence (verdict.py).
- PGRMZ (Garmin): altitude in feet and the fix dimension (1, 2 or 3), a mode
  statement as gpsd reads it.
- Simulated (``simulated`` True): GGA quality 8, mode indicator S in RMC, GLL,
  GNS (any system) or VTG. gpsd reports these as fixes flagged status 8 (or
  not flagged at all for GNS); we never turn them into a position.
- The NMEA 4.1 RMC navigation status (u-blox sends V beside a valid fix) is
  not a fix statement, as in gpsd.
- RMC date and time count only when the RMC states a valid status (A):
  MTK and Royaltek receivers send bogus dates such as 060180 with status V
  (gpsd's comment in processRMC). The time of day still separates epochs.
- GSA: mode 1/2/3; ``E`` (u-blox Antaris dead reckoning) or empty states no
  mode, as in gpsd. A GSA with fewer than 17 fields is ignored (gpsd's
  minimum). The PRNs listed are kept.
- Coordinates of exactly 0,0 are never a position, whatever the status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

KNOTS_TO_MPS = 1852.0 / 3600.0
KMH_TO_MPS = 1000.0 / 3600.0

_SHAPE = re.compile(r"\$([A-Z][A-Z0-9]{4,5}),[\x20-\x7e]*\*[0-9A-Fa-f]{2}")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")
_UNSIGNED = re.compile(r"\d+\.?\d*|\.\d+")
_DIGITS = re.compile(r"\d+")
DECODED = frozenset({"RMC", "GGA", "GNS", "GLL", "GSA", "VTG", "ZDA", "PGRMZ"})
_MIN_FIELDS = {"RMC": 7, "GGA": 12, "GNS": 12, "GLL": 6, "GSA": 2, "VTG": 4, "ZDA": 3, "PGRMZ": 3}  # gpsd's minimums
_FIX_QUALITIES = frozenset({1, 2, 3, 4, 5, 6, 7, 9})
_PAD = [""] * 20
_PRN_LIST = re.compile(r"(?:\d{0,3},)*\d{0,3}")


class SentenceError(ValueError):
    """A line that is not a well-formed, correctly checksummed sentence."""


class ChecksumMismatch(SentenceError):
    """The checksum is present but wrong."""


@dataclass(slots=True)
class Observation:
    """What one sentence says. ``None`` means the sentence does not say."""

    kind: str  # sentence type: RMC, GGA...
    talker: str = ""
    tod_ms: int | None = None  # UTC time of day, milliseconds
    day: date | None = None  # full date (ZDA)
    ddmmyy: tuple[int, int, int] | None = None  # RMC date, two-digit year: century resolved by the epoch
    fix: bool | None = None  # the sentence's own fix statement
    simulated: bool = False
    lat: float | None = None
    lon: float | None = None
    alt_msl: float | None = None
    speed_mps: float | None = None
    course_deg: float | None = None
    quality: int | None = None
    sats_used: int | None = None
    hdop: float | None = None
    alt_seen: bool = False  # coordinates and an altitude, whatever the fix says (gpsd keeps that altitude)
    gsa_mode: int | None = None  # the dimension a GSA (or a Garmin PGRMZ) states
    unsure_cycle: bool = False  # an RMC V or GGA 0 without time or date: gpsd stops trusting its cycle end
    gsa_prns: tuple[int, ...] = ()  # the satellites a GSA lists as used


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
    counted and dropped. Never raises anything else, whatever the line.
    """
    shape = _SHAPE.fullmatch(line)
    if shape is None:
        raise SentenceError("not an NMEA sentence with checksum")
    body = line[1:-3]
    if xor_bytes(body.encode("ascii")) != int(line[-2:], 16):
        raise ChecksumMismatch("checksum does not match")
    address = shape.group(1)
    kind = address[2:] if len(address) == 5 and address[0] != "P" else address
    if kind not in DECODED:
        return None  # accepted, nothing we use (GSV, GST, TXT, proprietary...)
    data = body[len(address) + 1 :].split(",")
    count = len(data)
    if count < _MIN_FIELDS[kind]:
        raise SentenceError(f"{kind}: {count} fields")
    if " " in body:
        data = [text.strip() for text in data]
    data += _PAD  # every field index of a decoder exists: empty when the sentence is short
    try:
        obs = _DECODERS[kind](data, count)
    except (ValueError, IndexError, OverflowError) as exc:
        raise SentenceError(f"{kind}: {exc}") from None
    obs.talker = address[:2]
    return obs


# --- field converters: empty -> None, nonsense or out of range -> ValueError ---


def number(text: str, low: float, high: float) -> float | None:
    if not text:
        return None
    if _NUMBER.fullmatch(text) is None:
        raise ValueError(f"not a number {text!r}")
    value = float(text)
    if not low <= value <= high:
        raise ValueError(f"out of range {text!r}")
    return value


def integer(text: str, low: int, high: int) -> int | None:
    if not text:
        return None
    if _DIGITS.fullmatch(text) is None:
        raise ValueError(f"not an integer {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"out of range {text!r}")
    return value


def _check(data: list[str], indexes: tuple[int, ...], low: float, high: float) -> None:
    """Fields we do not use must still be numbers (or empty)."""
    for index in indexes:
        number(data[index], low, high)


def tod_ms(text: str) -> int | None:
    """``hhmmss[.sss]`` -> milliseconds of the day (rounded, not truncated)."""
    if not text:
        return None
    if len(text) < 6 or _UNSIGNED.fullmatch(text) is None or not text[:6].isdigit():
        raise ValueError(f"bad time {text!r}")
    hours, minutes = int(text[0:2]), int(text[2:4])
    seconds = float(text[4:])
    leap = hours == 23 and minutes == 59 and 60 <= seconds < 61  # a leap second: the last instant of the day
    if hours > 23 or minutes > 59 or not (seconds < 60 or leap):
        raise ValueError(f"bad time {text!r}")
    return min((hours * 3600 + minutes * 60) * 1000 + round(seconds * 1000), 86_399_999)


def coordinate(value: str, hemisphere: str, max_degrees: int) -> float | None:
    """``ddmm.mmmm`` / ``dddmm.mmmm`` plus N/S/E/W -> signed decimal degrees."""
    if not value:
        return None
    dot = value.find(".")
    head = len(value) if dot < 0 else dot
    if head < 3 or _UNSIGNED.fullmatch(value) is None:
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
    lat = coordinate(data[at], data[at + 1], 90)
    lon = coordinate(data[at + 2], data[at + 3], 180)
    if lat is None or lon is None or (lat == 0 and lon == 0):
        return None, None
    return lat, lon


def _speed_course(obs: Observation, knots: str, course: str) -> None:
    speed = number(knots, 0, 10_000)
    obs.speed_mps = None if speed is None else speed * KNOTS_TO_MPS
    obs.course_deg = number(course, 0, 360)


def _ddmmyy(text: str) -> tuple[int, int, int] | None:
    if not text:
        return None
    if len(text) != 6 or not text.isdigit():
        raise ValueError(f"bad date {text!r}")
    day, month, year = int(text[0:2]), int(text[2:4]), int(text[4:6])
    date(2000 + year, month, day)  # a real calendar day (29 February checked in the epoch's century)
    return day, month, year


def _rmc(data: list[str], count: int) -> Observation:
    status, mode = data[1], data[11]
    obs = Observation("RMC", tod_ms=tod_ms(data[0]), simulated=mode == "S")
    lat, lon = _position(data, 2)
    _speed_course(obs, data[6], data[7])
    _check(data, (9,), 0, 180)  # magnetic variation
    obs.fix = status == "A" and mode != "N"
    obs.unsure_cycle = status != "A" and not (data[0] and data[8])
    if obs.fix:
        obs.ddmmyy = _ddmmyy(data[8])  # with status V the date is not read at all (060180...)
        obs.lat, obs.lon = lat, lon
    else:
        obs.speed_mps = obs.course_deg = None
    return obs


def _gga(data: list[str], count: int) -> Observation:
    quality = integer(data[5], 0, 9)
    obs = Observation("GGA", tod_ms=tod_ms(data[0]), quality=quality, simulated=quality == 8)
    lat, lon = _position(data, 1)
    obs.sats_used = integer(data[6], 0, 99)
    obs.hdop = number(data[7], 0, 999)
    alt = number(data[8], -1_000, 100_000)
    _check(data, (10,), -1_000, 1_000)  # geoid separation
    _check(data, (12, 13), 0, 100_000)  # age of differential corrections, reference station
    if quality is not None:
        obs.fix = quality in _FIX_QUALITIES
    obs.unsure_cycle = quality == 0 and not data[0]
    obs.alt_seen = lat is not None and alt is not None
    if obs.fix:
        obs.lat, obs.lon, obs.alt_msl = lat, lon, alt
    return obs


def _gns(data: list[str], count: int) -> Observation:
    modes = data[5]
    obs = Observation("GNS", tod_ms=tod_ms(data[0]), simulated="S" in modes)
    lat, lon = _position(data, 1)
    obs.sats_used = integer(data[6], 0, 99)
    obs.hdop = number(data[7], 0, 999)
    alt = number(data[8], -1_000, 100_000)
    _check(data, (9,), -1_000, 1_000)
    _check(data, (10, 11), 0, 100_000)
    if not modes or modes[0] == "N":
        obs.fix = False
    elif data[12] not in ("U", "V"):
        obs.fix = True
        obs.lat, obs.lon, obs.alt_msl = lat, lon, alt
        obs.alt_seen = lat is not None and alt is not None
    return obs


def _gll(data: list[str], count: int) -> Observation:
    status, mode = data[5], data[6]
    obs = Observation("GLL", tod_ms=tod_ms(data[4]), simulated=mode == "S")
    lat, lon = _position(data, 0)
    obs.fix = status == "A" and mode != "N"
    if obs.fix:
        obs.lat, obs.lon = lat, lon
    return obs


def _gsa(data: list[str], count: int) -> Observation:
    obs = Observation("GSA")
    if count < 17:
        return obs  # gpsd: "malformed", not used
    mode = data[1]
    if mode not in ("", "E"):
        obs.gsa_mode = integer(mode, 1, 3)
    standard = count <= 18  # 12 PRNs, PDOP, HDOP, VDOP [, NMEA 4.1 system id]
    dop_at = 14 if standard else count - 3  # longer ones (the Navior's 24 PRNs): DOPs last, ignored as gpsd does
    prns = data[2:dop_at]
    if _PRN_LIST.fullmatch(",".join(prns)) is None:
        raise ValueError("bad PRN")
    obs.gsa_prns = tuple(int(prn) for prn in prns if prn.strip("0"))
    dops = [number(data[i], 0, 999) for i in (dop_at, dop_at + 1, dop_at + 2)]
    if standard:
        obs.hdop = dops[1]
        integer(data[17], 0, 15)
    return obs


def _vtg(data: list[str], count: int) -> Observation:
    obs = Observation("VTG")
    if data[1] in ("T", "") and count >= 8:  # NMEA 2.3+: value,unit pairs
        mode = data[8]
        course, magnetic, knots, kmh = data[0], data[2], data[4], data[6]
    else:  # pre-2.3: true, magnetic, knots, km/h
        mode = ""
        course, magnetic, knots, kmh = data[0], data[1], data[2], data[3]
    obs.simulated = mode == "S"
    obs.course_deg = number(course, 0, 360)
    number(magnetic, 0, 360)
    speed_knots, speed_kmh = number(knots, 0, 10_000), number(kmh, 0, 20_000)
    if speed_knots is not None:
        obs.speed_mps = speed_knots * KNOTS_TO_MPS
    elif speed_kmh is not None:
        obs.speed_mps = speed_kmh * KMH_TO_MPS
    if mode in ("N", "E"):  # not valid, or dead-reckoned: gpsd leaves speed and track alone
        obs.speed_mps = obs.course_deg = None
    return obs


def _zda(data: list[str], count: int) -> Observation:
    obs = Observation("ZDA", tod_ms=tod_ms(data[0]))
    day, month, year = (integer(data[i], 0, 9999) for i in (1, 2, 3))
    _check(data, (4, 5), -99, 99)
    if day is not None and month is not None and year is not None:
        if not 1900 <= year <= 2200:
            raise ValueError(f"ZDA year {year}")
        obs.day = date(year, month, day)
    return obs


def _pgrmz(data: list[str], count: int) -> Observation:
    """Garmin's altitude (feet) and fix dimension: ``$PGRMZ,1680,f,3``."""
    obs = Observation("PGRMZ")
    feet = number(data[0], -3_300, 330_000)
    if feet is not None and data[1] == "f":
        obs.alt_seen = True
    if data[2]:
        obs.gsa_mode = integer(data[2], 1, 3)
    return obs


_DECODERS = {
    "RMC": _rmc,
    "GGA": _gga,
    "GNS": _gns,
    "GLL": _gll,
    "GSA": _gsa,
    "VTG": _vtg,
    "ZDA": _zda,
    "PGRMZ": _pgrmz,
}
