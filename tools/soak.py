"""The long fault-injection run: every fault many times; writes docs/reliability.md.

    make soak            (or: .venv/bin/python tools/soak.py [--scale 1.0])

Each scenario (tests/support/faults.py) runs the real daemon against a real
mosquitto and judges by what the broker delivered to a dispatch subscriber:
accepted alerts lost, sequence numbers reused, telemetry lost beyond the
commit window. Exit status 1 if any of those is not zero.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import faults, storage_faults  # noqa: E402

PLAN: list[tuple[Callable[[Path, int], faults.Outcome], int]] = [
    (faults.kill9, 100),
    (faults.broker_restarts, 20),
    (faults.half_open, 20),
    (faults.reset_and_delay, 10),
    (storage_faults.disk_full, 3),
    (storage_faults.read_only, 3),
    (faults.corrupt_database, 5),
    (faults.unplug, 20),
    (faults.garbage, 50),
]


def table(outcomes: list[faults.Outcome]) -> str:
    rows = ["| fault | injected | times | alerts accepted / lost | seq reused | telemetry lost | observed |",
            "|---|---|---|---|---|---|---|"]
    for o in outcomes:
        observed = "; ".join([*o.notes, *(f"PROBLEM: {x}" for x in o.problems)])
        rows.append(f"| {o.fault} | {o.injected} | {o.rounds} | {o.alerts_accepted} / {o.alerts_lost} | "
                    f"{o.seq_reused} | {o.telemetry_lost} | {observed} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every round count (0.1 for a quick look)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = parser.parse_args()
    outcomes = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        for scenario, rounds in PLAN:
            n = max(1, round(rounds * args.scale))
            started = time.monotonic()
            outcome = scenario(Path(tmp) / scenario.__name__, n)
            outcomes.append(outcome)
            print(f"{scenario.__name__:18s} x{n:<4d} {'ok ' if outcome.ok else 'FAIL'} "
                  f"({time.monotonic() - started:.0f} s) {outcome}", flush=True)
    ok = all(o.ok for o in outcomes)
    text = f"""# Reliability: faults injected and what was lost

Produced by `make soak` (`tools/soak.py`, scenarios in `tests/support/faults.py`) on
{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, Python {platform.python_version()},
in {time.monotonic() - began:.0f} s. Anyone can re-run it; a fast subset of the same scenarios runs in
every `make test` (`tests/test_faults.py`, `tests/test_storage_faults.py`, and the 20- and 30-round kill -9
tests of `tests/test_store_and_forward.py` and `tests/test_loss_audit.py`).

Every scenario runs the real daemon (`patrol-agent run`) against a real mosquitto, with fixes fed through a
pty at 5 Hz and a position reported for every fix, and judges by what a dispatch-side subscriber actually
received:

- **alerts accepted / lost**: test alarms whose "accepted" (fsynced) reply reached the caller, and of those,
  any that never arrived at the subscriber;
- **seq reused**: (vehicle id, boot, seq) seen with two different message ids;
- **telemetry lost**: fixes fed while the agent ran that never arrived as positions, beyond the documented
  commit window (`outbox.commit_window_ms`, 1 s) before a kill; for the storage faults, any message
  (boot, seq) produced before the final kill -9 that never arrived;
- the kill -9 row also gives what dispatch's own audit (`patrol-agent dispatch audit`) finds in the capture:
  gaps in (boot, seq), each of which must be at the end of its boot (followed only by fsynced alerts).

The storage faults are real: the state dir on a small tmpfs filled to ENOSPC by another file, and on an
ext4 card image that the kernel remounts read-only (as after a card's I/O errors) under the running daemon;
each round also checks that the fault clears and that what waited in RAM is written once the card takes
writes again (a kill -9 after the recovery, then everything produced before it must arrive).

Result: **{'zero alerts lost, zero sequence numbers reused' if ok else 'FAILURES: see the table'}**.

{table(outcomes)}

Notes: the broker-restart scenario waits for the dispatch subscriber to be back before each kill: a
broker killed with `kill -9` loses what it had queued for an absent subscriber (the test broker saves its
state every second), which would measure mosquitto's persistence, not the agent. The agent deletes a
message only on PUBACK; more positions than fixes are the at-least-once duplicates, told apart by (boot, seq).
GPIO bounce and stuck buttons are injected in `tests/test_panic.py` (timed edges on mock pins).
"""
    args.out.write_text(text)
    print(f"wrote {args.out}; {'all ok' if ok else 'FAILURES'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
