"""Time: what time it is, and how sure we are.

A Pi has no real-time clock: after a cold start the system clock may be days
off until NTP (or never, without a network). Once the GNSS receiver has
given a time, the agent carries that time forward on the monotonic clock and
marks messages "gnss"; before that it uses the system clock and says whether
the kernel considers it synchronised. Thread-safe for readers: the core
thread updates it, anyone may read it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from datetime import UTC, datetime

from agent.messages import TimeSource

_TIME_ERROR = 5  # adjtimex(2): clock not synchronised
_GNSS_TRUST_S = 6 * 3600  # carry a GNSS time forward this long on the monotonic clock
_MIN_UNIX = 1_704_067_200.0  # 2024-01-01: no receiver time before this is taken
_MAX_UNIX = 4_102_444_800.0  # 2100-01-01


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("_rest", ctypes.c_long * 40)]  # larger than struct timex


def system_clock_synced() -> bool | None:
    """True/False from the kernel (adjtimex), None where that cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        timex = _Timex()
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class Clock:
    """UTC now, from GNSS when known; plus the monotonic clock the policies use."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        synced: Callable[[], bool | None] = system_clock_synced,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self._synced = synced
        self._gnss: tuple[float, float] | None = None  # (GNSS unix time, monotonic then)
        self._synced_cache: tuple[float, bool | None] = (-1e9, None)

    def gnss_time(self, unix_time: float) -> None:
        """A fix just gave the receiver's UTC (ignored when it is not a plausible time)."""
        if not _MIN_UNIX <= unix_time <= _MAX_UNIX:  # also false for NaN
            return
        self._gnss = (unix_time, self.monotonic())

    def now(self) -> tuple[datetime, TimeSource]:
        if self._gnss is not None:
            at, mono = self._gnss
            elapsed = self.monotonic() - mono
            if 0 <= elapsed < _GNSS_TRUST_S:
                return datetime.fromtimestamp(at + elapsed, tz=UTC), TimeSource.GNSS
        source = TimeSource.SYSTEM_SYNCED if self.system_synced() else TimeSource.SYSTEM_UNSYNCED
        return datetime.fromtimestamp(self.wall(), tz=UTC), source

    def system_synced(self) -> bool | None:
        checked, value = self._synced_cache
        if self.monotonic() - checked > 60:
            value = self._synced()
            self._synced_cache = (self.monotonic(), value)
        return value
