"""Building NMEA sentences in tests: correct checksums unless asked otherwise."""

from __future__ import annotations


def sentence(body: str, *, checksum: str | None = None, end: str = "\r\n") -> str:
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return f"${body}*{checksum or f'{value:02X}'}{end}"


def epoch(hhmmss: str, *, lat: str = "4807.038", ns: str = "N", lon: str = "01131.000", ew: str = "E",
          ddmmyy: str = "250326", valid: bool = True) -> str:
    """A plain GGA + GSA + RMC epoch, with or without a fix."""
    if not valid:
        return (
            sentence(f"GPGGA,{hhmmss},,,,,0,00,99.9,,,,,,")
            + sentence("GPGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9")
            + sentence(f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N")
        )
    return (
        sentence(f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},1,08,0.9,545.4,M,46.9,M,,")
        + sentence("GPGSA,A,3,04,05,09,12,24,25,29,31,,,,,1.8,0.9,1.5")
        + sentence(f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},022.4,084.4,{ddmmyy},003.1,W,A")
    )
