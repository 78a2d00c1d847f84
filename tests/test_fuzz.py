"""Property-based tests (hypothesis): hostile bytes and hostile commands never crash the agent,
never grow its memory, and never become a position or an action."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import Command, CommandRejected, parse
from drivers.gnss import NmeaDecoder
from drivers.gnss.framing import NmeaFramer
from drivers.gnss.sentences import checksum_ok
from tests.support.nmea import epoch

GOOD = epoch("101010.00") + epoch("101011.00")
NOW = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_in_chunks(data: bytes, cuts: list[int]) -> NmeaDecoder:
    decoder = NmeaDecoder()
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        decoder.feed(data[start:cut])
        start = max(start, cut)
    decoder.flush(end_of_stream=True)
    return decoder


@FAST
@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=20))
def test_arbitrary_bytes_never_raise_and_memory_stays_bounded(data: bytes, cuts: list[int]) -> None:
    decoder = decode_in_chunks(data, cuts)
    assert len(decoder._framer._rest) <= decoder._framer.max_line


@FAST
@given(st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120), max_size=30))
def test_lines_without_a_valid_checksum_never_give_a_position(lines: list[str]) -> None:
    stream = "".join(f"${line}\r\n" for line in lines).encode()
    fixes = NmeaDecoder().feed(stream)
    framed = NmeaFramer().feed(stream)
    if not any("*" in line and checksum_ok(line) for line in framed):
        assert not any(f.has_position for f in fixes)


@FAST
@given(st.integers(min_value=1, max_value=len(GOOD) - 1), st.integers(min_value=1, max_value=255))
def test_a_corrupted_byte_never_moves_the_vehicle(position: int, flip: int) -> None:
    """Any single corrupted byte: the epoch it hits is dropped or unchanged, never a different position."""
    data = bytearray(GOOD.encode())
    data[position] ^= flip
    decoder = NmeaDecoder()
    fixes = decoder.feed(bytes(data)) + decoder.flush(end_of_stream=True)
    clean = NmeaDecoder()
    truth = {(f.time_ms, f.lat, f.lon) for f in clean.feed(GOOD.encode()) + clean.flush(end_of_stream=True)}
    for fix in fixes:
        if fix.has_position:
            # the same place at the same time; or, if the sentence carrying the date was lost, no time at all
            assert (fix.time_ms, fix.lat, fix.lon) in truth or (
                fix.time_ms is None and any((fix.lat, fix.lon) == (lat, lon) for _, lat, lon in truth))


@FAST
@given(st.binary(min_size=1, max_size=200_000).map(lambda b: b.replace(b"\n", b"").replace(b"\r", b"")))
def test_endless_line_without_terminator_is_bounded(data: bytes) -> None:
    framer = NmeaFramer()
    for _ in range(3):
        framer.feed(data)
    assert len(framer._rest) <= framer.max_line


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


@FAST
@given(st.binary(max_size=5000), st.booleans())
def test_arbitrary_command_bytes_are_accepted_or_rejected_never_crash(payload: bytes, retained: bool) -> None:
    try:
        command, _ = parse(payload, retained=retained, vehicle_id="PV-1", now=NOW)
    except CommandRejected as exc:
        assert exc.reason
    else:
        assert isinstance(command, Command) and not retained


@FAST
@given(JSON, st.sampled_from(["ping", "set_reporting", "ack_alert", "reboot", "sh"]))
def test_arbitrary_json_commands_are_checked_before_anything_runs(args: object, verb: str) -> None:
    body = {"command_id": "c-1", "vehicle_id": "PV-1", "verb": verb, "args": args,
            "issued_at": "2026-11-25T07:59:00Z", "expires_at": "2026-11-25T08:05:00Z"}
    try:
        command, _checked = parse(json.dumps(body).encode(), retained=False, vehicle_id="PV-1", now=NOW)
    except CommandRejected:
        return
    assert command.verb in ("ping", "set_reporting", "ack_alert")
    assert all(not isinstance(v, dict | list) for v in command.args.values())  # flat, always
