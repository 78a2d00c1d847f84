"""Conformance with gpsd on nine real receiver captures (read in place from ../shared)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.conformance import Comparison, compare

CAPTURE_NAMES = [
    "bu353s4", "firefly-II", "meinberg-gps164", "mr-350p", "nmea-rtk",
    "quectel-l76k-nmea", "telit-pls83-w", "triton400", "ublox-zed-f9p-nmea",
]


def test_decoder_agrees_with_gpsd_on_every_capture(captures: Path) -> None:
    results: list[Comparison] = []
    for name in CAPTURE_NAMES:
        log = captures / f"{name}.log"
        assert log.exists(), f"capture {log} is missing"
        results.append(compare(log))
    total = sum(r.gpsd_fixes for r in results)
    matched = sum(r.matched for r in results)
    modes = sum(r.mode_agree for r in results)
    false_positions = sum(r.false_positions for r in results)
    print()
    for result in results:
        print(result.line())
        for miss in result.misses[:3]:
            print("    " + miss[:200])
    print(f"{'ALL':28s} gpsd 2D/3D {total:4d}  matched {matched:4d} ({matched / total:7.2%})  "
          f"mode agrees {modes:4d} ({modes / matched:7.2%})  positions where gpsd has no fix {false_positions}")
    assert total > 400  # all nine captures were read
    assert matched / total >= 0.99
    assert modes / matched >= 0.98
    assert false_positions == 0
    for result in results:
        assert result.gpsd_fixes > 0, f"{result.name}: gpsd has fixes, the harness found none"
        assert result.match_ratio >= 0.95, result.line()


@pytest.mark.parametrize("name", ["meinberg-gps164"])
def test_no_fix_periods_of_a_real_receiver_give_no_position(captures: Path, name: str) -> None:
    result = compare(captures / f"{name}.log")
    assert result.false_positions == 0
    assert result.ours > result.gpsd_fixes  # we did emit its no-fix epochs, without positions
