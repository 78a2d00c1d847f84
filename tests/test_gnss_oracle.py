"""The decoder against gpsd on generated streams: gpsd's verdict recorded once, checked here without gpsd.

tests/support/nmea_cases.py generates receivers (15 habits: SiRF, u-blox 8 and 9, a 5 Hz Quectel, a 10 Hz
RTK, GGA+GSA+ZDA, RMC only, GNS/GLL only, per-system GSAs...) driven through every kind of solution (no fix,
GPS, DGPS, PPS, RTK fixed and float, dead reckoning, manual, simulator, stale with no satellites, and the
transitions where the sentences disagree), 0 to 12 satellites, with and without altitude, across midnight
and a pre-fix date. tools/gpsd_oracle.py ran them through gpsd 3.27.5 (Debian's source package, built here:
it gives the shared captures' .chk files line for line) and kept its VERSION line and TPVs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agent.gnss_decode import iter_fixes
from drivers.gnss import NmeaDecoder
from tests.support.conformance import Differential, capture_date, differential, gpsd_release
from tests.support.nmea_cases import all_cases

GOLDEN = Path(__file__).parent / "fixtures" / "nmea" / "gpsd"
CASES = all_cases()
NO_FIX_KINDS = {"none", "sim", "sim_a", "stale0_v"}  # every sentence of the epoch says no fix (or simulated)
CONTRADICTING_KINDS = {"stale0", "gga_only_fix", "rmc_only_fix"}  # the order of the sentences decides (verdict.py)
ORACLE_RELEASE = "3.27.5"


def test_the_golden_streams_are_the_generators_own() -> None:
    names = {case.name for case in CASES}
    on_disk = {path.stem for path in GOLDEN.glob("*.nmea")}
    assert on_disk == names, "run tools/gpsd_oracle.py to regenerate the fixtures"
    for case in CASES:
        assert (GOLDEN / f"{case.name}.nmea").read_text() == case.text(), case.name
        assert gpsd_release(GOLDEN / f"{case.name}.nmea.chk") == ORACLE_RELEASE, case.name


def test_gpsd_fixes_found_and_no_position_where_gpsd_has_none() -> None:
    results: list[Differential] = [differential(GOLDEN / f"{case.name}.nmea") for case in CASES]
    gpsd_fixes = sum(r.gpsd_fixes for r in results)
    clean = sum(r.clean for r in results)
    clean_matched = sum(r.clean_matched for r in results)
    matched = sum(r.matched for r in results)
    modes = sum(r.mode_agree for r in results)
    documented: Counter[str] = Counter()
    for r in results:
        documented.update(r.documented)
    print(f"\n{len(results)} streams: gpsd 2D/3D epochs {gpsd_fixes}, found {matched} ({matched / gpsd_fixes:.2%}); "
          f"in epochs where no sentence says no fix: {clean_matched}/{clean}; mode agrees {modes}/{matched} "
          f"({modes / matched:.2%}); positions where gpsd has none: {sum(r.false_positions for r in results)}")
    print("gpsd fix, ours not, by design:", dict(documented))
    for r in results:
        assert r.false_positions == 0, (r.name, r.misses[:5])
        assert r.clean_matched == r.clean, (r.name, r.misses[:5])
    assert clean > 1500  # the streams were read and most of their fixes are clean ones
    assert modes / matched >= 0.99


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_what_the_receiver_knew_never_becomes_a_false_position(case: object) -> None:
    """Independent of gpsd: an epoch generated without a fix, or simulated, is never a position."""
    from tests.support.nmea_cases import Case

    assert isinstance(case, Case)
    path = GOLDEN / f"{case.name}.nmea"
    with path.open("rb") as stream:
        fixes = {f.time_ms: f for f in iter_fixes(stream, NmeaDecoder(default_day=capture_date(path)))}
    for when, state in case.truth:
        fix = fixes.get(round(when.timestamp() * 1000))
        if fix is None:
            continue  # no date known yet (no header, no RMC/ZDA so far): nothing to compare
        if state.kind in NO_FIX_KINDS:
            if state.kind.startswith("sim") or state.gsa_mode not in (2, 3):  # a GSA saying 2D/3D has a say
                assert not fix.has_position, (when, state)
            assert fix.simulated == state.kind.startswith("sim"), (when, state)
        elif state.kind not in CONTRADICTING_KINDS and state.sats >= 3:
            assert fix.has_position, (when, state, fix)
