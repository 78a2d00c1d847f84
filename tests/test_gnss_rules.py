"""gpsd's rules for what a fix is, one fixture each (tests/fixtures/nmea, written here).

Each fixture is a receiver behaviour met in the field: no satellites used,
a simulator, coordinates beside a status V, a two-digit year at a rollover,
GSA 3D with three satellites, no GGA, NaN and Infinity, a pre-fix date.
"""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from agent.gnss_decode import decode_stream
from drivers.gnss import NmeaDecoder
from tests.support.nmea import sentence

FIXTURES = Path(__file__).parent / "fixtures" / "nmea"


def decode(name: str, day: date | None = None) -> tuple[list[dict[str, object]], dict[str, int]]:
    out = io.StringIO()
    with (FIXTURES / name).open("rb") as stream:
        counters = decode_stream(stream, out, day)
    return [json.loads(line) for line in out.getvalue().splitlines()], counters.as_dict()


def by_time(fixes: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(f["time"])[11:23]: f for f in fixes}


def test_a_gga_with_no_satellites_used_after_the_rmc_withdraws_the_fix() -> None:
    fixes = by_time(decode("zero_sats.nmea", date(2025, 3, 2))[0])
    assert fixes["08:15:00.000"]["mode"] == 3  # 9 satellites: the fix
    for moment in ("08:15:01.000", "08:15:02.000", "08:15:03.000"):  # quality 1, 1 and 6 (DR) with 00 used
        assert fixes[moment]["mode"] == 1, moment
        assert fixes[moment]["lat"] is None and fixes[moment]["lon"] is None
        assert fixes[moment]["no_fix_reason"] == "no satellites used"
    assert fixes["08:15:04.000"]["mode"] == 3


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD", "GB", "GQ", "GI"])
def test_no_satellites_used_is_no_fix_whatever_the_talker(talker: str) -> None:
    """A BeiDou- or Galileo-only module sends $BDGGA / $GAGGA: "00" used is no fix there too, alone or
    after the epoch's RMC."""
    p = "4404.1237,N,01213.8476,E"
    for first_rmc in (False, True):
        decoder = NmeaDecoder(default_day=date(2025, 3, 2))
        text = ""
        for second in range(3):
            if first_rmc:
                text += sentence(f"{talker}RMC,08150{second}.00,A,{p},0.05,12.0,020325,,,A")
            text += sentence(f"{talker}GGA,08150{second}.00,{p},1,00,0.9,120.4,M,45.1,M,,")
        fixes = decoder.feed(text.encode()) + decoder.flush()
        assert fixes and all(f.mode == 1 and f.lat is None for f in fixes), (talker, first_rmc, fixes)


def test_status_v_alone_is_no_fix_even_with_a_valid_mode_indicator() -> None:
    """Status V with coordinates and a mode indicator that says autonomous (A): the status decides."""
    p = "4404.1237,N,01213.8476,E"
    for line in (f"GPRMC,101500.00,V,{p},0.0,0.0,020325,,,A", f"GPGLL,{p},101500.00,V,A"):
        decoder = NmeaDecoder(default_day=date(2025, 3, 2))
        fixes = decoder.feed(sentence(line).encode()) + decoder.flush()
        assert fixes and all(f.mode == 1 and f.lat is None for f in fixes), (line, fixes)


def test_a_2d_fix_keeps_the_altitude_its_gga_reported() -> None:
    """Three satellites and an altitude, no GSA: 2D (too few for 3D), and the altitude is not dropped."""
    p = "4404.1237,N,01213.8476,E"
    decoder = NmeaDecoder(default_day=date(2025, 3, 2))
    text = "".join(sentence(f"GPGGA,08150{s}.00,{p},1,03,1.9,120.4,M,45.1,M,,") for s in range(3))
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert fixes and all(f.mode == 2 and f.alt_msl == pytest.approx(120.4) for f in fixes), fixes


def test_the_last_word_of_the_epoch_stands_as_in_gpsd() -> None:
    """The same sentences the other way round: the RMC, later, states the fix again (gpsd 3.22 and 3.27 both
    report a 3D fix for these epochs); and one or two satellites used is no fix only when no later sentence
    says otherwise."""
    p = "4404.1237,N,01213.8476,E"
    decoder = NmeaDecoder(default_day=date(2025, 3, 2))
    text = ""
    for second, sats in ((0, 9), (1, 0), (2, 2)):
        text += sentence(f"GPGGA,08150{second}.00,{p},1,{sats:02d},0.9,120.4,M,45.1,M,,")
        text += sentence(f"GPRMC,08150{second}.00,A,{p},0.05,12.0,020325,,,A")
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert [f.mode for f in fixes] == [3, 3, 3]
    decoder = NmeaDecoder(default_day=date(2025, 3, 2))
    text = sentence(f"GPRMC,081503.00,A,{p},0.05,12.0,020325,,,A") + sentence(f"GPGGA,081503.00,{p},1,02,0.9,,M,,M,,")
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert [f.mode for f in fixes] == [1] and fixes[0].no_fix_reason == "2 satellites used"


def test_a_simulated_fix_is_never_a_position() -> None:
    fixes, _ = decode("simulator.nmea")
    assert len(fixes) == 3
    for fix in fixes:
        assert fix["simulated"] is True
        assert fix["mode"] == 1 and fix["lat"] is None and fix["lon"] is None and fix["alt_msl"] is None


def test_status_v_or_mode_n_beside_coordinates_is_no_fix() -> None:
    fixes = by_time(decode("status_v_position.nmea", date(2025, 3, 2))[0])
    # GGA quality 1, then RMC V; GGA 1, then GLL V: the later sentence says no fix, as in gpsd
    for moment in ("10:15:00.000", "10:15:01.000"):
        assert fixes[moment]["mode"] == 1 and fixes[moment]["lat"] is None, moment
    # GGA quality 0 with coordinates, then RMC A: this receiver's cycle ends at its GGA (learnt from the two
    # epochs before), where gpsd reports and we stop: no fix (gpsd reports none with this time either)
    assert fixes["10:15:02.000"]["mode"] == 1 and fixes["10:15:02.000"]["lat"] is None
    # RMC A with mode indicator N (data not valid): no fix, where gpsd reports one
    assert fixes["10:15:03.000"]["mode"] == 1 and fixes["10:15:03.000"]["lat"] is None
    assert fixes["10:15:04.000"]["mode"] == 3 and fixes["10:15:04.000"]["lat"] == pytest.approx(44.068728333)


def test_an_rmc_status_other_than_a_is_no_fix() -> None:
    """NMEA's RMC status is A or V; gpsd takes a D (or anything else) as not valid."""
    decoder = NmeaDecoder(default_day=date(2025, 3, 2))
    fixes = decoder.feed(sentence("GPRMC,101500.00,D,4404.1237,N,01213.8476,E,0.0,0.0,020325,,,D").encode())
    fixes += decoder.flush()
    assert len(fixes) == 1 and fixes[0].mode == 1 and fixes[0].lat is None


def test_a_garmin_pgrmz_states_the_dimension() -> None:
    """A Garmin sends its fix dimension in PGRMZ: 3D although the GGA (3 satellites, no altitude) alone says 2D."""
    p = "4404.1237,N,01213.8476,E"
    decoder = NmeaDecoder(default_day=date(2025, 3, 2))
    text = ""
    for second, dimension in ((0, 3), (1, 3), (2, 2)):
        text += sentence(f"GPRMC,10150{second},A,{p},0.0,0.0,020325,,,A")
        text += sentence(f"GPGGA,10150{second},{p},1,03,1.2,,,47.0,M,,")
        text += sentence("GPGSA,A,2,01,03,06,,,,,,,,,,2.1,1.2,1.7") + sentence(f"PGRMZ,,f,{dimension}")
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert [f.mode for f in fixes] == [3, 3, 2]


def test_two_digit_years_take_the_century_nearest_the_clock() -> None:
    fixes, _ = decode("year_rollover.nmea")
    assert [f["time"] for f in fixes] == [
        "1999-12-31T23:59:59.000Z",
        "2000-01-01T00:00:00.000Z",  # 00 after 99: the century turned
        "1999-08-22T12:00:00.000Z",  # a GPS week rollover victim: reported as sent (as gpsd does), not trusted
    ]


def test_the_year_window_follows_the_clock() -> None:
    """In 2079 a receiver's "80" is 2080 (gpsd's fixed 2080 wrap would say 1980)."""
    late = datetime(2079, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    decoder = NmeaDecoder(clock=lambda: late)
    text = (sentence("GPRMC,235959.00,A,4404.1237,N,01213.8476,E,0.0,0.0,311279,,,A")
            + sentence("GPRMC,000000.00,A,4404.1237,N,01213.8476,E,0.0,0.0,010180,,,A"))
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert [f.time_iso for f in fixes] == ["2079-12-31T23:59:59.000Z", "2080-01-01T00:00:00.000Z"]


def test_times_before_the_build_floor_are_not_trusted() -> None:
    from drivers.gnss.fix import TIME_FLOOR

    decoder = NmeaDecoder()
    text = (FIXTURES / "year_rollover.nmea").read_bytes()
    parsed = decoder.feed(text) + decoder.flush(end_of_stream=True)
    assert [f.time_trusted for f in parsed] == [False, False, False]
    now = datetime.now(UTC)
    assert now.date() >= TIME_FLOOR
    ddmmyy = now.strftime("%d%m%y")
    fresh = NmeaDecoder()
    fixes2 = fresh.feed(sentence(f"GPRMC,{now:%H%M%S}.00,A,4404.1237,N,01213.8476,E,0.0,0.0,{ddmmyy},,,A").encode())
    fixes2 += fresh.flush()
    assert fixes2[0].time_trusted


def test_gsa_3d_with_three_satellites_keeps_the_altitude_between_gsas() -> None:
    fixes, _ = decode("gsa3_three_sats.nmea")
    assert len(fixes) == 10
    for fix in fixes:
        assert fix["mode"] == 3 and fix["alt_msl"] == 210.5 and fix["sats_used"] == 3


def test_without_gga_the_mode_comes_from_the_gsa_and_lasts_until_the_next() -> None:
    fixes, _ = decode("no_gga.nmea")
    assert [f["mode"] for f in fixes] == [3, 3, 3, 3]
    assert all(f["alt_msl"] is None and f["lat"] is not None for f in fixes)


def test_nan_infinity_and_absurd_numbers_are_counted_and_never_become_values() -> None:
    fixes, counters = decode("nan_inf.nmea")
    assert counters["invalid_sentences"] == 18  # every sentence of the fixture but the last two
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix["mode"] == 3 and fix["alt_msl"] == 34.0 and fix["speed_mps"] == pytest.approx(0.1 * 1852 / 3600)
    for value in fix.values():
        assert not (isinstance(value, float) and not math.isfinite(value))


def test_a_pre_fix_date_of_a_status_v_rmc_is_never_a_time() -> None:
    fixes, _ = decode("prefix_date.nmea")
    times = [f["time"] for f in fixes]
    assert times[:2] == [None, None]  # no date yet: 060180 comes with status V
    assert times[2:] == ["2025-03-02T08:30:05.000Z", "2025-03-02T08:30:06.000Z"]
    assert [f["mode"] for f in fixes] == [1, 1, 3, 3]


def test_a_cold_start_without_time_holds_a_bounded_number_of_sentences() -> None:
    decoder = NmeaDecoder()
    data = (FIXTURES / "cold_start.nmea").read_bytes()
    fixes = []
    for _ in range(5000):  # about 20 minutes of a receiver without time
        fixes += decoder.feed(data)
    assert fixes == []
    assert decoder.counters.sentences == 30_000
    assert decoder.pending_sentences <= 64
    assert decoder.counters.held_dropped >= 5000 * 4 - 64  # GGA, GSA, RMC and VTG of each burst, bar the last
    assert not decoder.time_seen
