"""A full or failing SD card under the running daemon: alerts still go out, nothing ends, writing resumes.

The faults are real: the whole state dir on a small tmpfs filled to ENOSPC
by another file, and on an ext4 card image that the kernel remounts
read-only after an injected file-system error (what a dying SD card does).
Both need root; without it the tests skip and say why.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import storage_faults as faults


@pytest.mark.parametrize("kind", ["full", "read_only"])
def test_a_failing_card_stops_no_alert_and_the_backlog_is_written_when_it_returns(tmp_path: Path, kind: str) -> None:
    outcome = faults.storage_fault(tmp_path / kind, 1, kind)
    print(f"\n{outcome}")
    assert not outcome.problems, outcome.problems
    assert outcome.alerts_accepted == faults.PRESSES and outcome.alerts_lost == 0, outcome
    assert outcome.telemetry_lost == "none", outcome.telemetry_lost
    assert outcome.seq_reused == 0
    assert outcome.ok
