"""The unit's own state for health telemetry, each field degrading to None where its source is absent.

Read from the core thread every health interval: Raspberry Pi firmware and
thermal files, /proc, statvfs of the state directory. Nothing here may
raise: a missing file means "not known here" (not a Pi, a container...).
"""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Any

THERMAL = Path("/sys/class/thermal/thermal_zone0/temp")
THROTTLED = (Path("/sys/devices/platform/soc/soc:firmware/get_throttled"),
             Path("/sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/get_throttled"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_temp_c() -> float | None:
    raw = _read(THERMAL)
    try:
        return None if raw is None else round(int(raw) / 1000, 1)
    except ValueError:
        return None


def throttled() -> dict[str, bool] | None:
    """The Pi firmware's throttling bits (undervoltage, frequency capped, throttled), now and since boot."""
    for path in THROTTLED:
        raw = _read(path)
        if raw is None:
            continue
        try:
            bits = int(raw, 16)
        except ValueError:
            return None
        return {"undervoltage": bool(bits & 0x1), "capped": bool(bits & 0x2), "throttled": bool(bits & 0x4),
                "undervoltage_since_boot": bool(bits & 0x10000), "throttled_since_boot": bool(bits & 0x40000)}
    return None


def memory() -> dict[str, int | None]:
    info: dict[str, int] = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            info[key] = int(value.split()[0]) * 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"total": info.get("MemTotal"), "available": info.get("MemAvailable"), "agent_max_rss": rss}


def disk_free(path: Path) -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def io_write_bytes() -> int | None:
    for line in (_read(Path("/proc/self/io")) or "").splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return None


def snapshot(state_dir: Path, clock_synced: bool | None) -> dict[str, Any]:
    mem = memory()
    throttle = throttled()
    return {
        "cpu_temp_c": cpu_temp_c(),
        "throttled": None if throttle is None else any(throttle.values()),
        "undervoltage": None if throttle is None else throttle["undervoltage"],
        "mem_total": mem["total"],
        "mem_available": mem["available"],
        "agent_max_rss": mem["agent_max_rss"],
        "disk_free": disk_free(state_dir),
        "io_write_bytes": io_write_bytes(),
        "load_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "clock_synced": clock_synced,
    }
