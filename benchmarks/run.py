"""``make bench``: every benchmark under both CPU budgets, and one table of the figures.

Each benchmark script runs twice, as a separate process: with the daemon on
the machine as it is (``full``) and with the daemon alone confined to a
quarter of one core (``quarter``, see ``benchmarks/budget.py``); where the
quarter-core cgroup cannot be made, that column says why and the run goes on.
The figures each run reports are gathered into one table: figure, target,
the baseline measured in the same run, the value and the ratio to the
baseline, for both budgets, and whether the target holds.

    .venv/bin/python benchmarks/run.py [--only NAME ...] [--budget full|quarter] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import budget

HERE = Path(__file__).resolve().parent

# (script, arguments for a full run, arguments for --quick)
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("gnss_decoder.py", [], []),
    ("gnss_epoch_latency.py", [], ["--epochs", "60"]),
    ("gnss_reader_cpu.py", [], ["--seconds", "15"]),
    ("panic_latency.py", [], ["--presses", "40", "--backlog", "20000"]),
    ("outbox_drain.py", [], ["--messages", "20000", "--alerts", "40"]),
    ("outbox_polls.py", [], ["--rows", "50000"]),
    ("outage_alert.py", [], ["--outage", "60"]),
    ("startup_rss.py", [], ["--minutes", "1", "--starts", "3"]),
    ("disk_writes.py", [], ["--seconds", "120"]),
]


def meets(value: float | None, target: str) -> bool | None:
    found = re.fullmatch(r"\s*(<=|>=|<|>)\s*([-+0-9.eE]+)\s*", target or "")
    if not found or value is None:
        return None
    op, bound = found.group(1), float(found.group(2))
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]


def run_one(script: str, args: list[str], which: str) -> tuple[list[dict[str, Any]], str | None]:
    env = dict(os.environ, PATROL_BENCH_BUDGET=which)
    print(f"\n=== {script} ({which}) {' '.join(args)}", flush=True)
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(HERE / script), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    records = []
    for line in proc.stdout:
        if line.startswith(budget.MARK):
            records.append(json.loads(line[len(budget.MARK):]))
        else:
            print("  " + line.rstrip(), flush=True)
    code = proc.wait()
    budget.release_stale()
    print(f"=== {script} ({which}): exit {code}, {time.monotonic() - began:.0f} s", flush=True)
    return records, (None if code == 0 else f"exit {code}")


def number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def table(rows: dict[str, dict[str, dict[str, Any]]], skipped: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="patrol-agent benchmarks: full machine and a quarter of one core")
    for heading in ("figure", "unit", "budget", "target", "value", "baseline", "ratio", "holds"):
        out.add_column(heading, overflow="fold")
    for figure, by_budget in rows.items():
        for which in ("full", "quarter"):
            record = by_budget.get(which)
            if record is None:
                why = skipped.get(which, "not measured")
                out.add_row(figure, "", which, "", "-", "-", "-", why)
                continue
            value, base = record["value"], record["baseline"]
            ratio = f"{value / base:.2f}" if value is not None and base else "-"
            held = meets(value, record["target"])
            baseline_text = number(base) + (f" ({record['baseline_is']})" if record["baseline_is"] else "")
            out.add_row(figure, record["unit"], which, record["target"] or "-", number(value), baseline_text,
                        ratio, {True: "yes", False: "NO", None: "-"}[held])
    Console(width=160).print(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=[], help="benchmark names (without .py)")
    parser.add_argument("--budget", choices=("full", "quarter"), action="append")
    parser.add_argument("--quick", action="store_true", help="shorter runs (figures less settled)")
    args = parser.parse_args()
    budgets = args.budget or ["full", "quarter"]
    skipped: dict[str, str] = {}
    why = budget.unavailable()
    if "quarter" in budgets and why:
        print(f"quarter-core budget skipped: {why}", flush=True)
        skipped["quarter"] = f"skipped: {why}"
        budgets = [b for b in budgets if b != "quarter"]
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    failed = []
    for script, full_args, quick_args in BENCHMARKS:
        if args.only and script.removesuffix(".py") not in args.only:
            continue
        if not (HERE / script).exists():
            continue
        for which in budgets:
            records, error = run_one(script, quick_args if args.quick else full_args, which)
            if error:
                failed.append(f"{script} ({which}): {error}")
            for record in records:
                rows.setdefault(record["figure"], {})[which] = record
    table(rows, skipped)
    for line in failed:
        print(f"FAILED: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
