"""Time: the unit's one authority for what time it is, how sure it is, and how long things took.

Read and updated on the core thread only (other threads have their own
monotonic clocks for their own timeouts).

- Durations (commit windows, backoff, republishing, expiry, rate limits) use
  the monotonic clock, which no NTP step moves.
- Moments come from three sources; every message says which one won
  (``time_source``):
  * ``gnss``: the receiver's UTC, carried forward on the monotonic clock,
    taken only from an epoch with a live fix (not simulated), not before the
    floor (this build's date: a receiver saying 1980 or 2000 is wrong, not
    early), not after the ceiling, and, when the system clock is
    synchronised, within ``MAX_DISAGREE_S`` of it: a receiver may refine a
    synchronised clock, never move it;
  * ``system_synced``: the system clock, synchronised by NTP;
  * ``system_unsynced``: the system clock, not known to be right (a Pi has
    no RTC: after a cold start it may be days behind until NTP).
- "Synchronised" is asked of the kernel with adjtimex(2) where the process
  may (outside the service), else read from systemd-timesyncd's flag file
  ``/run/systemd/timesync/synchronized`` (touched at each synchronisation;
  counted only when newer than this boot): systemd 252's ``ProtectClock=yes``
  denies even a read-only adjtimex to the service.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from agent.messages import TimeSource
from drivers.gnss.fix import TIME_FLOOR, Fix

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
GNSS_TRUST_S = 6 * 3600  # carry a receiver time forward this long on the monotonic clock
MAX_DISAGREE_S = 5.0  # how far a receiver may be from a synchronised system clock
FLOOR = TIME_FLOOR  # this build: no true time is earlier (the decoder's floor too)
CEILING_YEARS = 30
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
_SYNCED_EVERY_S = 60.0


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_long * 40)]  # larger than struct timex


def _adjtimex() -> bool | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        state = int(libc.adjtimex(ctypes.byref(_Timex())))
    except (OSError, AttributeError):
        return None
    return None if state < 0 else state != _TIME_ERROR


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def system_clock_synced(flag: Path = TIMESYNC_FLAG) -> bool | None:
    """True/False from the kernel; under the service's filters, from systemd-timesyncd's flag; None
    where neither can be asked."""
    kernel = _adjtimex()
    if kernel is not None:
        return kernel
    try:
        touched = flag.stat().st_mtime
    except FileNotFoundError:
        return False if flag.parent.is_dir() else None
    except OSError:
        return None
    booted = _boot_time()
    return booted is None or touched >= booted


def floor_unix(floor: date = FLOOR) -> float:
    return datetime(floor.year, floor.month, floor.day, tzinfo=UTC).timestamp()


class Clock:
    """UTC now and where it came from; the monotonic clock for every duration."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synced: Callable[[], bool | None] = system_clock_synced,
        floor: date = FLOOR,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self._synced = synced
        self._floor = floor_unix(floor)
        self._ceiling = floor_unix(floor.replace(year=floor.year + CEILING_YEARS))
        self._gnss: tuple[float, float] | None = None  # (receiver unix time, monotonic then)
        self._synced_cache: tuple[float, bool | None] = (float("-inf"), None)
        self.refused = 0  # receiver times not taken
        self.disagreement_s: float | None = None  # receiver minus synchronised system clock, when refused for it

    # --- the receiver ---------------------------------------------------------------

    def offer(self, fix: Fix, at: float) -> bool:
        """A receiver epoch completed at monotonic ``at``: take its time if it can be trusted."""
        if fix.time_ms is None or not fix.time_trusted or fix.simulated:
            return False  # no fix, no trust: pre-fix receivers send made-up dates
        moment = fix.time_ms / 1000
        if not self._floor <= moment <= self._ceiling:  # also false for NaN
            self.refused += 1
            return False
        if self.system_synced():
            off = moment + (self.monotonic() - at) - self.wall()
            if abs(off) > MAX_DISAGREE_S:
                self.refused += 1
                self.disagreement_s = off
                return False
        self.disagreement_s = None
        self._gnss = (moment, at)
        return True

    def trusted(self, fix: Fix) -> bool:
        """This epoch's time is the one the clock took (its moment can label a message)."""
        return self._gnss is not None and fix.time_ms is not None and self._gnss[0] == fix.time_ms / 1000

    # --- now -------------------------------------------------------------------------

    def now(self) -> tuple[datetime, TimeSource]:
        moment, source = self._reading()
        return _utc(moment), source

    def stamp(self) -> tuple[float, bool]:
        """Unix time now and whether it can be trusted (a receiver's time carried forward, or a
        synchronised system clock), for what is stored: as :meth:`now`, without building a datetime."""
        moment, source = self._reading()
        return moment, source is not TimeSource.SYSTEM_UNSYNCED

    def _reading(self) -> tuple[float, TimeSource]:
        """The receiver's time carried forward while it is fresh and (with NTP) agrees; else the system's."""
        wall = self.wall()
        synced = self.system_synced()
        if self._gnss is not None:
            at, mono = self._gnss
            elapsed = self.monotonic() - mono
            moment = at + elapsed
            if 0 <= elapsed < GNSS_TRUST_S and (not synced or abs(moment - wall) <= MAX_DISAGREE_S):
                return moment, TimeSource.GNSS
        return wall, TimeSource.SYSTEM_SYNCED if synced else TimeSource.SYSTEM_UNSYNCED

    def moment_of(self, fix: Fix | None) -> tuple[datetime, TimeSource]:
        """The time a message about ``fix`` describes: the epoch's own time if trusted, else now."""
        if fix is not None and self.trusted(fix):
            assert fix.time_ms is not None
            return _utc(fix.time_ms / 1000), TimeSource.GNSS
        return self.now()

    def system_synced(self) -> bool | None:
        checked, value = self._synced_cache
        now = self.monotonic()
        if now - checked > _SYNCED_EVERY_S:
            value = self._synced()
            self._synced_cache = (now, value)
        return value


def _utc(unix: float) -> datetime:
    try:
        return datetime.fromtimestamp(unix, tz=UTC)
    except (OverflowError, OSError, ValueError):  # guarded: a bad number never ends a message
        return datetime.fromtimestamp(time.time(), tz=UTC)

