"""Golden NMEA fixtures for each difficult case a receiver can send (tests/fixtures/nmea)."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import pytest

from agent.gnss_decode import decode_stream
from drivers.gnss import NmeaDecoder
from drivers.gnss.framing import NmeaFramer
from tests.support.nmea import epoch, sentence

FIXTURES = Path(__file__).parent / "fixtures" / "nmea"


def decode(name: str, day: date | None = None) -> tuple[list[dict[str, object]], dict[str, int]]:
    out = io.StringIO()
    with (FIXTURES / name).open("rb") as stream:
        counters = decode_stream(stream, out, day)
    return [json.loads(line) for line in out.getvalue().splitlines()], counters.as_dict()


def test_every_talker_gives_a_fix() -> None:
    fixes, counters = decode("talkers.nmea")
    assert len(fixes) == 8
    assert all(f["mode"] == 3 and f["lat"] == pytest.approx(52.525) and f["lon"] == pytest.approx(13.4) for f in fixes)
    assert fixes[5]["time"] == "2026-03-15T12:00:05.000Z"
    assert counters["sentences"] == 16 and counters["fixes"] == 8


def test_stream_without_rmc_takes_the_date_from_zda_and_rolls_over_midnight() -> None:
    fixes, _ = decode("no_rmc_zda_midnight.nmea")
    assert [f["time"] for f in fixes] == [
        "2025-12-31T23:59:58.000Z",
        "2025-12-31T23:59:59.000Z",
        "2026-01-01T00:00:00.000Z",  # no ZDA in this epoch: the last date, rolled over
        "2026-01-01T00:00:01.000Z",
    ]
    assert all(f["mode"] == 3 and f["alt_msl"] is not None for f in fixes)
    assert fixes[0]["lat"] == pytest.approx(59.955530) and fixes[0]["lon"] == pytest.approx(10.737102)
    assert fixes[0]["speed_mps"] is None  # nothing in this stream states a speed


def test_gns_marked_not_valid_for_navigation_gives_way_to_gll_and_speed_comes_from_vtg() -> None:
    """The GNS's NMEA 4.1 navigation status is V: gpsd ignores the sentence, its altitude with it (2D from the
    GLL, as gpsd 3.22 and 3.27 say on this very file)."""
    fixes, _ = decode("gns_gll_vtg.nmea")
    assert [f["mode"] for f in fixes] == [2, 2]
    assert fixes[0]["alt_msl"] is None and fixes[1]["alt_msl"] is None
    assert fixes[0]["lat"] == pytest.approx(37.3910853) and fixes[0]["lon"] == pytest.approx(-5.9866978)
    assert fixes[0]["speed_mps"] == pytest.approx(10.0, abs=0.01)
    assert fixes[0]["course_deg"] == 45.0
    assert fixes[0]["sats_used"] == 12 and fixes[0]["hdop"] == 1.1


def test_nmea_411_nav_status_v_does_not_hide_a_valid_fix() -> None:
    fixes, counters = decode("nmea411.nmea")
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix["time"] == "2025-07-18T14:15:23.000Z"
    assert fix["mode"] == 3 and fix["quality"] == 1 and fix["sats_used"] == 11 and fix["hdop"] == 0.71
    assert fix["lat"] == pytest.approx(46.056920) and fix["lon"] == pytest.approx(14.505802)
    assert fix["alt_msl"] == 297.6
    assert counters["checksum_errors"] == 0 and counters["invalid_sentences"] == 0


def test_no_fix_epochs_never_carry_a_position() -> None:
    fixes, counters = decode("no_fix.nmea")
    assert len(fixes) == 2
    for fix in fixes:
        assert fix["mode"] == 1
        assert fix["lat"] is None and fix["lon"] is None and fix["alt_msl"] is None
    assert counters["fixes"] == 0


def test_damaged_input_is_counted_and_dropped_and_nothing_invalid_becomes_a_position() -> None:
    fixes, counters = decode("damaged.nmea")
    assert [f["time"][11:19] for f in fixes] == ["08:30:00", "08:30:01", "08:30:04"]  # type: ignore[index]
    assert all(40 < f["lat"] < 60 for f in fixes)  # type: ignore[operator]  # never the 99-degree one
    assert counters["checksum_errors"] == 1
    assert counters["invalid_sentences"] == 3  # missing checksum, truncated, absurd latitude
    assert counters["fragments"] >= 3  # fused start, noisy line, overlong line
    assert counters["garbage_bytes"] >= 3 + 64  # NUL bytes and noise at least


def test_wrong_baud_rate_yields_no_sentence() -> None:
    fixes, counters = decode("wrong_baud.bin")
    assert fixes == [] and counters["sentences"] == 0 and counters["garbage_bytes"] == 3000


def test_ten_hertz_epochs_are_kept_apart_to_the_millisecond() -> None:
    fixes, _ = decode("10hz.nmea")
    assert len(fixes) == 20
    assert [f["time"] for f in fixes[:3]] == [
        "2024-09-03T09:15:00.000Z", "2024-09-03T09:15:00.100Z", "2024-09-03T09:15:00.200Z"]
    assert all(f["quality"] == 4 for f in fixes)


def test_date_header_is_used_only_when_the_stream_has_none() -> None:
    text = sentence("GPGGA,101010.00,5231.5000,N,01324.0000,E,1,07,1.1,34.5,M,39.0,M,,")
    decoder = NmeaDecoder(default_day=date(2024, 2, 29))
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert fixes[0].time_iso == "2024-02-29T10:10:10.000Z"
    undated = NmeaDecoder()
    fixes = undated.feed(text.encode()) + undated.flush()
    assert fixes[0].time_ms is None and fixes[0].has_position


def test_time_fractions_of_different_lengths_are_one_epoch() -> None:
    text = (
        sentence("GPGLL,3352.1408,S,15112.5520,E,224507.000,A,A")
        + sentence("GPGGA,224507.00,3352.1408,S,15112.5520,E,1,07,1.3,00041,M,0022,M,,")
        + sentence("GPRMC,224507.0,A,3352.1408,S,15112.5520,E,0.00,118.2,090614,,")
    )
    decoder = NmeaDecoder()
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert len(fixes) == 1 and fixes[0].time_iso == "2014-06-09T22:45:07.000Z" and fixes[0].mode == 3


def test_a_sentence_split_across_reads_is_reassembled() -> None:
    data = epoch("120000.00", ddmmyy="010126").encode()
    decoder = NmeaDecoder()
    fixes = []
    for i in range(0, len(data), 7):
        fixes += decoder.feed(data[i:i + 7])
    fixes += decoder.flush()
    assert len(fixes) == 1 and fixes[0].has_position and decoder.counters.garbage_bytes == 0


def test_framer_memory_is_bounded_on_endless_garbage() -> None:
    framer = NmeaFramer(max_line=100)
    for _ in range(1000):
        assert framer.feed(b"$" + b"A" * 4095) == []
    assert len(framer._rest) <= 100
    assert framer.counters.fragments >= 999
