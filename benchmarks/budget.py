"""The two CPU budgets every benchmark runs under, and how a figure is reported.

``full``: the daemon runs as any process on this machine. ``quarter``: the
daemon (and only it: the broker, the feeders and the subscribers stay
outside) is confined by a cgroup v1 CPU controller to 2.5 ms of CPU in every
10 ms period, a quarter of one core, roughly what a Raspberry-Pi-class core
several times slower than this one leaves the agent. The budget is chosen by
``PATROL_BENCH_BUDGET`` (``full`` by default); a benchmark calls
:func:`confine` with the daemon's pid once it has started it, and
:func:`report` for each figure. ``benchmarks/run.py`` runs every benchmark
under both budgets and prints one table.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 10_000
QUOTA_US = 2_500  # a quarter of one core
MARK = "BENCH "


def name() -> str:
    """The budget this run is under: ``full`` or ``quarter``."""
    chosen = os.environ.get("PATROL_BENCH_BUDGET", "full")
    if chosen not in ("full", "quarter"):
        raise SystemExit(f"PATROL_BENCH_BUDGET must be full or quarter, not {chosen!r}")
    return chosen


def unavailable() -> str | None:
    """Why the quarter-core budget cannot be set up here, or None."""
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 CPU controller at {CGROUP_CPU} (cgroup v2 only, or not mounted)"
    if not os.access(CGROUP_CPU, os.W_OK):
        return f"cannot create a cgroup under {CGROUP_CPU} (not root?)"
    return None


def confine(pid: int) -> None:
    """Under the ``quarter`` budget, move process ``pid`` (all its threads) into a quarter-core cgroup.

    Does nothing under ``full``. The cgroup is named after the pid and left
    for :func:`release` (or the next run) to remove once the process is gone.
    """
    if name() != "quarter":
        return
    why = unavailable()
    if why:
        raise SystemExit(f"quarter-core budget unavailable: {why}")
    group = CGROUP_CPU / f"patrol-bench-{pid}"
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(QUOTA_US))
    (group / "cgroup.procs").write_text(str(pid))
    release_stale()


def release_stale() -> None:
    """Remove the benchmark cgroups whose processes have gone."""
    for group in CGROUP_CPU.glob("patrol-bench-*"):
        try:
            if not (group / "cgroup.procs").read_text().strip():
                group.rmdir()
        except OSError:
            pass


def report(figure: str, value: float | None, unit: str, *, target: str = "",
           baseline: float | None = None, baseline_is: str = "", note: str = "") -> None:
    """One figure, printed for the reader and as a line ``benchmarks/run.py`` collects.

    ``target``: the figure it must meet, as text ("<= 10", ">= 0.9"), checked
    by the table on ``value``; ``baseline``: the same quantity measured in the
    same run for something the agent is compared with (raw paho, bare
    pynmea2), described by ``baseline_is``.
    """
    record = {"figure": figure, "value": value, "unit": unit, "target": target, "baseline": baseline,
              "baseline_is": baseline_is, "note": note, "budget": name()}
    print(MARK + json.dumps(record), flush=True)
    sys.stdout.flush()
