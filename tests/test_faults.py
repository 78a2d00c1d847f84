"""Fault injection, fast subset: each fault a few times against a real mosquitto.

The long run (100 kill -9 rounds, 20 broker restarts, 20 half-open episodes,
...) is `make soak`, which writes docs/reliability.md; it is also reachable
here with `pytest -m slow`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import faults

FAST: list[tuple[Callable[[Path, int], faults.Outcome], int]] = [
    (faults.broker_restarts, 2),
    (faults.half_open, 2),
    (faults.unplug, 2),
    (faults.garbage, 3),
    (faults.corrupt_database, 1),
    (faults.reset_and_delay, 2),
]


@pytest.mark.parametrize(("scenario", "rounds"), FAST, ids=[s.__name__ for s, _ in FAST])
def test_fault_is_survived_without_loss(tmp_path: Path, scenario: Callable[[Path, int], faults.Outcome],
                                        rounds: int) -> None:
    outcome = scenario(tmp_path / scenario.__name__, rounds)
    print(f"\n{outcome}")
    assert outcome.ok, outcome
    assert outcome.alerts_lost == 0 and outcome.seq_reused == 0


@pytest.mark.slow
def test_long_kill_9_run(tmp_path: Path) -> None:
    outcome = faults.kill9(tmp_path / "kill9", 100)
    assert outcome.ok, outcome
