"""GNSS receiver: serial NMEA bytes to trustworthy Fixes."""

from drivers.gnss.decoder import DecoderCounters, NmeaDecoder
from drivers.gnss.fix import Fix

__all__ = ["DecoderCounters", "Fix", "NmeaDecoder"]
