"""A simulated receiver: a patrol route driven with realistic speeds, NMEA out.

Used by ``patrol-agent sim gnss`` (the demo and black-box tests) to replay a
track through a pty at its real rate, exactly as a receiver on a serial port
would. The route is a loop through a city centre: boulevards and side
streets, slowing for turns, stopping at lights, a longer stop at a
checkpoint, and a short underpass where the fix is lost. Deterministic: the
same arguments give the same bytes.
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

EARTH_RADIUS_M = 6_371_000.0
MPS_TO_KNOTS = 3600.0 / 1852.0

# (lat, lon, cruise speed on the leg that starts here in m/s, stop seconds at this point, underpass leg)
ROUTE: list[tuple[float, float, float, float, bool]] = [
    (42.69770, 23.32190, 11.0, 0, False),
    (42.69640, 23.32680, 14.0, 25, False),  # lights
    (42.69340, 23.33060, 9.0, 0, False),
    (42.69050, 23.32910, 16.0, 0, True),  # underpass ahead
    (42.68690, 23.32150, 13.0, 30, False),  # lights
    (42.68880, 23.31550, 8.0, 0, False),
    (42.69230, 23.31410, 8.0, 60, False),  # checkpoint
    (42.69530, 23.31700, 12.0, 20, False),  # lights
]


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since start
    lat: float
    lon: float
    speed_mps: float
    course_deg: float
    fix: bool


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def _bearing(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    y = math.sin(lon2 - lon1) * math.cos(lat2)
    x = math.cos(lat1) * math.sin(lat2) - math.sin(lat1) * math.cos(lat2) * math.cos(lon2 - lon1)
    return math.degrees(math.atan2(y, x)) % 360


def _turn_speed(heading_in: float, heading_out: float, cruise: float) -> float:
    turn = abs((heading_out - heading_in + 180) % 360 - 180)
    return max(3.0, cruise * (1 - turn / 120)) if turn > 15 else cruise


def drive(laps: int = 1, rate_hz: float = 1.0, seed: int = 7) -> Iterator[Sample]:
    """The vehicle's true state every ``1/rate_hz`` seconds, lap after lap."""
    rng = random.Random(seed)
    dt = 1.0 / rate_hz
    t, speed = 0.0, 0.0
    points = [(p[0], p[1]) for p in ROUTE]
    for _ in range(laps):
        for i, (lat, lon, cruise, _stop, underpass) in enumerate(ROUTE):
            here, there = points[i], points[(i + 1) % len(points)]
            after = points[(i + 2) % len(points)]
            heading = _bearing(here, there)
            exit_speed = 0.0 if ROUTE[(i + 1) % len(ROUTE)][3] else _turn_speed(heading, _bearing(there, after), cruise)
            length, done = _distance(here, there), 0.0
            while done < length:
                left = length - done
                braking = (speed**2 - exit_speed**2) / (2 * 2.5)
                target = exit_speed if left <= braking + speed * dt else cruise * (1 + rng.uniform(-0.05, 0.05))
                accel = 1.8 if target > speed else -2.5
                speed = max(min(speed + accel * dt, target) if accel > 0 else max(speed + accel * dt, target), 0.8)
                done = min(length, done + speed * dt)
                f = done / length
                yield Sample(t, lat + (there[0] - lat) * f, lon + (there[1] - lon) * f, speed, heading,
                             fix=not (underpass and 0.35 < f < 0.6))
                t += dt
            stop_s = ROUTE[(i + 1) % len(ROUTE)][3]
            for _ in range(int(stop_s * rate_hz)):
                speed = 0.0
                yield Sample(t, there[0], there[1], 0.0, heading, fix=True)
                t += dt


def _checksum(body: str) -> str:
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"${body}*{value:02X}\r\n"


def _ddmm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    return (f"{degrees:02d}{minutes:08.5f}" if lat else f"{degrees:03d}{minutes:08.5f}"), hemi


def sentences(sample: Sample, start: datetime) -> str:
    """One epoch as a u-blox-like receiver sends it: RMC, VTG, GGA, GSA."""
    when = start + timedelta(seconds=sample.t)
    hhmmss = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
    ddmmyy = when.strftime("%d%m%y")
    if not sample.fix:
        return "".join(
            _checksum(body)
            for body in (
                f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N",
                "GPVTG,,T,,M,,N,,K,N",
                f"GPGGA,{hhmmss},,,,,0,00,99.99,,,,,,",
                "GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99",
            )
        )
    lat, ns = _ddmm(sample.lat, True)
    lon, ew = _ddmm(sample.lon, False)
    knots = sample.speed_mps * MPS_TO_KNOTS
    kmh = sample.speed_mps * 3.6
    return "".join(
        _checksum(body)
        for body in (
            f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots:.3f},{sample.course_deg:.2f},{ddmmyy},,,A",
            f"GPVTG,{sample.course_deg:.2f},T,,M,{knots:.3f},N,{kmh:.3f},K,A",
            f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},1,09,0.90,560.2,M,37.8,M,,",
            "GPGSA,A,3,02,05,12,15,18,24,25,29,31,,,,1.60,0.90,1.30",
        )
    )


def track(laps: int = 1, rate_hz: float = 1.0, start: datetime | None = None) -> Iterator[tuple[float, str]]:
    """(seconds since start, NMEA text) for each epoch."""
    start = start or datetime(2026, 11, 25, 8, 0, 0, tzinfo=UTC)
    for sample in drive(laps, rate_hz):
        yield sample.t, sentences(sample, start)


def play(write: Callable[[str], object], stop: threading.Event, *, rate_hz: float = 1.0, laps: int = 100) -> None:
    """Write the track's epochs with ``write`` at their real rate until ``stop`` is set."""
    began = time.monotonic()
    for t, text in track(laps, rate_hz):
        if stop.is_set():
            return
        delay = began + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        write(text)


def replay_to_pty(link: Path, *, rate_hz: float = 1.0, laps: int = 1000, realtime: bool = True) -> None:
    """Create a pty, point ``link`` at its device, and play the track into it.

    The GNSS reader opens ``link`` as it would ``/dev/serial0``. Times in the
    sentences follow the system clock, as a live receiver's would.
    """
    master, slave = os.openpty()
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(link.name + ".tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(os.ttyname(slave))
    tmp.replace(link)
    began = time.monotonic()
    start = datetime.now(UTC)
    try:
        for t, text in track(laps, rate_hz, start=start):
            if realtime:
                delay = began + t - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            os.write(master, text.encode("ascii"))
    finally:
        link.unlink(missing_ok=True)
        os.close(master)
        os.close(slave)
