"""Properties of the decoder over inputs hypothesis makes up: bad numbers anywhere, any field values behind a
correct checksum, endless sentences without a time, any two-digit year."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.gnss import Fix, NmeaDecoder
from drivers.gnss.epoch import MAX_HELD
from drivers.gnss.fix import TIME_FLOOR
from tests.support.nmea import sentence

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
P = "4404.1237,N,01213.8476,E"

# a valid sentence of each decoded kind, and the indexes of its numeric fields (after the address)
TEMPLATES: list[tuple[str, tuple[int, ...]]] = [
    (f"GPGGA,081500.00,{P},1,09,0.9,120.4,M,45.1,M,1.5,0123", (0, 1, 3, 5, 6, 7, 8, 10, 12, 13)),
    (f"GPRMC,081500.00,A,{P},0.05,12.0,020325,1.2,E,A", (0, 2, 4, 6, 7, 8, 9)),
    (f"GNGNS,081500.00,{P},AAN,14,1.3,250.8,50.0,2.0,0042,S", (0, 1, 3, 6, 7, 8, 9, 10, 11)),
    (f"GPGLL,{P},081500.00,A,A", (0, 2, 4)),
    ("GNGSA,A,3,02,05,08,10,12,15,18,21,24,27,29,31,1.8,0.9,1.5,1", (1, *range(2, 14), 14, 15, 16, 17)),
    ("GPVTG,84.4,T,80.0,M,0.12,N,0.22,K,A", (0, 2, 4, 6)),
    ("GPZDA,081500.00,02,03,2025,00,00", (0, 1, 2, 3, 4, 5)),
]
BAD_NUMBERS = ["NaN", "nan", "inf", "-inf", "Infinity", "-Infinity", "1e999", "1e3", "1E-2", "1_0", "0x1F",
               "--1", "+", "-", ".", "1.2.3", " NaN", "1,5", "12a", "0.1.", "1-"]


def finite(fix: Fix) -> bool:
    return all(not isinstance(v, float) or math.isfinite(v) for v in fix.as_report().values())


@SETTINGS
@given(st.sampled_from(TEMPLATES), st.data(), st.sampled_from(BAD_NUMBERS))
def test_a_bad_number_in_any_numeric_field_makes_the_sentence_invalid(
        template: tuple[str, tuple[int, ...]], data: st.DataObject, bad: str) -> None:
    text, numeric = template
    address, *fields = text.split(",")
    index = data.draw(st.sampled_from(numeric))
    fields[index] = bad
    decoder = NmeaDecoder()
    fixes = decoder.feed(sentence(",".join([address, *fields])).encode()) + decoder.flush(end_of_stream=True)
    counters = decoder.counters
    if "," in bad:  # a comma shifts the fields: whatever it gives, never a non-finite value
        assert all(finite(f) for f in fixes)
        return
    assert counters.invalid_sentences == 1 and counters.sentences == 0, (index, bad)
    assert fixes == []


FIELD = st.one_of(st.sampled_from(["", "0", "1", "8", "A", "V", "N", "S", "D", "E", "99.9", "0000.0000", "-1",
                                   "4404.1237", "01213.8476", "9000.0001", "18000.0000", "235960", "081500.00",
                                   "NaN", "inf", "290225", "310225", "AAN", "NNN", "SS"]),
                  st.text(alphabet="0123456789.-+NSEWAV", max_size=12))


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["GPGGA", "GPRMC", "GNGNS", "GPGLL", "GNGSA", "GPVTG", "GPZDA"]),
                          st.lists(FIELD, min_size=3, max_size=18)), min_size=1, max_size=8))
def test_any_fields_behind_a_good_checksum_never_give_a_false_or_odd_position(
        lines: list[tuple[str, list[str]]]) -> None:
    stream = "".join(sentence(",".join([address, *fields])) for address, fields in lines)
    decoder = NmeaDecoder()
    fixes = decoder.feed(stream.encode()) + decoder.flush(end_of_stream=True)
    for fix in fixes:
        assert finite(fix)
        if fix.has_position:
            assert fix.lat is not None and fix.lon is not None
            assert -90 <= fix.lat <= 90 and -180 <= fix.lon <= 180 and (fix.lat, fix.lon) != (0, 0)
            assert not fix.simulated and fix.mode in (2, 3)
            assert _some_sentence_states_a_fix(lines)
            assert not any(_simulated(address, fields) for address, fields in lines)


def _some_sentence_states_a_fix(lines: list[tuple[str, list[str]]]) -> bool:
    def at(fields: list[str], i: int) -> str:
        return fields[i] if i < len(fields) else ""

    for address, f in lines:
        kind = address[2:]
        if kind == "GGA" and at(f, 5) in {"1", "2", "3", "4", "5", "6", "7", "9"}:
            return True
        if kind == "RMC" and at(f, 1) in ("A", "D") and at(f, 11) != "N":
            return True
        if kind == "GLL" and at(f, 5) == "A" and at(f, 6) != "N":
            return True
        if kind == "GNS" and at(f, 5)[:1] not in ("", "N") and at(f, 12) not in ("U", "V"):
            return True
    return False


def _simulated(address: str, f: list[str]) -> bool:
    kind = address[2:]
    field = {"GGA": 5, "RMC": 11, "GLL": 6, "VTG": 8}.get(kind)
    if kind == "GNS":
        return "S" in (f[5] if len(f) > 5 else "")
    if field is None or field >= len(f):
        return False
    return f[field] == ("8" if kind == "GGA" else "S")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["GPGGA,,,,,,0,,,,,,,,", "GPGSA,A,1,,,,,,,,,,,,,,,", "GPRMC,,V,,,,,,,,,,N",
                                 "GPVTG,,,,,,,,,N", "GNGNS,,,,,,NNN,00,,,,,", "GPGLL,,,,,,V,N"]),
                min_size=1, max_size=40), st.integers(min_value=1, max_value=200))
def test_sentences_without_a_time_never_hold_more_than_the_bound(bodies: list[str], repeat: int) -> None:
    decoder = NmeaDecoder()
    burst = "".join(sentence(body) for body in bodies).encode()
    for _ in range(repeat):
        assert decoder.feed(burst) == []
    assert decoder.pending_sentences <= MAX_HELD
    assert decoder.counters.held_dropped == max(0, len(bodies) * repeat - MAX_HELD)


@SETTINGS
@given(st.integers(min_value=0, max_value=99), st.integers(min_value=1, max_value=12),
       st.integers(min_value=1, max_value=28), st.integers(min_value=1980, max_value=2300))
def test_a_two_digit_year_lands_within_fifty_years_of_the_clock(yy: int, month: int, day: int,
                                                                 clock_year: int) -> None:
    now = datetime(clock_year, 6, 1, tzinfo=UTC).timestamp()
    decoder = NmeaDecoder(clock=lambda: now)
    text = sentence(f"GPRMC,120000.00,A,{P},0.0,0.0,{day:02d}{month:02d}{yy:02d},,,A")
    fixes = decoder.feed(text.encode()) + decoder.flush()
    assert len(fixes) == 1 and fixes[0].time_iso is not None
    year = int(fixes[0].time_iso[:4])
    reference = max(TIME_FLOOR.year, clock_year)
    assert year % 100 == yy and reference - 50 <= year <= reference + 49
