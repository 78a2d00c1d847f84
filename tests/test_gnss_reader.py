"""The GNSS reader on a real pty: fixes flow, the device vanishes and returns, noise never stops it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.config import GnssConfig
from drivers.gnss import Fix
from drivers.gnss.reader import GnssReader, GnssState
from tests.support.nmea import epoch, sentence
from tests.support.pty_gnss import PtyGnss


class Recorder:
    def __init__(self) -> None:
        self.fixes: list[Fix] = []
        self.states: list[GnssState] = []
        self.cond = threading.Condition()

    def on_fix(self, fix: Fix) -> None:
        with self.cond:
            self.fixes.append(fix)
            self.cond.notify_all()

    def on_state(self, state: GnssState, _detail: str) -> None:
        with self.cond:
            self.states.append(state)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Until ``predicate`` holds; it may watch the reader too, which notifies nobody: look every 20 ms."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                assert left > 0, f"timed out; states {self.states}, {len(self.fixes)} fixes"
                self.cond.wait(min(left, 0.02))


@pytest.fixture
def reading(gnss_pty: PtyGnss) -> Iterator[tuple[GnssReader, Recorder]]:
    cfg = GnssConfig(port=str(gnss_pty.path), no_data_after_s=0.5, no_nmea_after_s=0.8,
                     reopen_initial_s=0.05, reopen_max_s=0.2)
    recorder = Recorder()
    reader = GnssReader(cfg, on_fix=recorder.on_fix, on_state=recorder.on_state)
    reader.start()
    recorder.wait(lambda: reader.opens >= 1)  # pyserial flushes the input on open: write after it
    yield reader, recorder
    reader.stop()


def state_of(reader: GnssReader) -> GnssState:
    return reader.state


def _seconds(i: int) -> str:
    return f"1200{i:02d}.00"


def test_fixes_flow_from_the_pty_and_each_epoch_is_emitted_once(
        gnss_pty: PtyGnss, reading: tuple[GnssReader, Recorder]) -> None:
    reader, rec = reading
    for i in range(5):
        gnss_pty.write(epoch(_seconds(i)))
        time.sleep(0.1)
    rec.wait(lambda: len(rec.fixes) >= 5)
    assert [f.time_iso for f in rec.fixes][:5] == [f"2026-03-25T12:00:{i:02d}.000Z" for i in range(5)]
    assert all(f.mode == 3 and f.lat == pytest.approx(48.1173) for f in rec.fixes)
    assert reader.state is GnssState.FIX
    assert reader.counters()["sentences"] == 15


def test_quiet_line_ends_the_epoch_without_waiting_for_the_next(
        gnss_pty: PtyGnss, reading: tuple[GnssReader, Recorder]) -> None:
    _, rec = reading
    started = time.monotonic()
    gnss_pty.write(epoch(_seconds(0)))
    rec.wait(lambda: len(rec.fixes) == 1, timeout=2)
    assert time.monotonic() - started < 1.0  # not a second later, when the next epoch would come


def test_unplug_and_replug_resumes_fixes(gnss_pty: PtyGnss, reading: tuple[GnssReader, Recorder]) -> None:
    reader, rec = reading
    gnss_pty.write(epoch(_seconds(0)))
    rec.wait(lambda: len(rec.fixes) == 1)
    gnss_pty.unplug()
    rec.wait(lambda: GnssState.DEVICE_MISSING in rec.states)
    time.sleep(0.5)  # several reopen attempts against a missing device
    assert state_of(reader) is GnssState.DEVICE_MISSING
    gnss_pty.plug()
    deadline = time.monotonic() + 5
    i = 1
    while len(rec.fixes) < 3 and time.monotonic() < deadline:
        gnss_pty.write(epoch(_seconds(i)))
        i += 1
        time.sleep(0.1)
    assert len(rec.fixes) >= 3, "fixes did not resume after replug"
    assert state_of(reader) is GnssState.FIX
    assert reader.counters()["disconnects"] == 1 and reader.counters()["opens"] == 2


def test_wrong_baud_rate_is_reported_as_no_nmea(gnss_pty: PtyGnss, reading: tuple[GnssReader, Recorder]) -> None:
    reader, rec = reading
    noise = (Path(__file__).parent / "fixtures" / "nmea" / "wrong_baud.bin").read_bytes()
    deadline = time.monotonic() + 3
    while GnssState.NO_NMEA not in rec.states and time.monotonic() < deadline:
        gnss_pty.write(noise[:200])
        time.sleep(0.05)
    assert reader.state is GnssState.NO_NMEA
    assert "baud" in reader.state_detail
    assert rec.fixes == []


def test_silent_device_is_reported_as_no_data(reading: tuple[GnssReader, Recorder]) -> None:
    reader, rec = reading
    rec.wait(lambda: reader.state is GnssState.NO_DATA and "no data" in reader.state_detail, timeout=3)


def test_garbage_between_epochs_never_stops_the_reader(
        gnss_pty: PtyGnss, reading: tuple[GnssReader, Recorder]) -> None:
    reader, rec = reading
    for i in range(4):
        gnss_pty.write(b"\x00\xff\xfe$GPGGA,12" + bytes(range(256)) + b"\r\n")
        gnss_pty.write(epoch(_seconds(i)))
        time.sleep(0.1)
    rec.wait(lambda: len(rec.fixes) >= 4)
    assert all(f.has_position for f in rec.fixes)
    assert reader.counters()["garbage_bytes"] > 4 * 256


def test_missing_device_at_start_is_retried_until_it_appears(tmp_path: Path) -> None:
    path = tmp_path / "late-gnss"
    cfg = GnssConfig(port=str(path), reopen_initial_s=0.05, reopen_max_s=0.1)
    rec = Recorder()
    reader = GnssReader(cfg, on_fix=rec.on_fix, on_state=rec.on_state)
    reader.start()
    try:
        rec.wait(lambda: GnssState.DEVICE_MISSING in rec.states)
        device = PtyGnss(path)
        try:
            deadline = time.monotonic() + 5
            second = 0
            while not rec.fixes and time.monotonic() < deadline:
                device.write(epoch(_seconds(second)))  # a receiver's epochs, until the reader has the port open
                second += 1
                time.sleep(0.1)
            assert rec.fixes and rec.fixes[0].has_position
        finally:
            device.close()
    finally:
        reader.stop()


FIXTURES = Path(__file__).parent / "fixtures" / "nmea"


@pytest.fixture
def timing(gnss_pty: PtyGnss) -> Iterator[tuple[GnssReader, Recorder]]:
    cfg = GnssConfig(port=str(gnss_pty.path), no_data_after_s=5, no_nmea_after_s=5, no_time_after_s=2.0,
                     reopen_initial_s=0.05, reopen_max_s=0.2)
    recorder = Recorder()
    reader = GnssReader(cfg, on_fix=recorder.on_fix, on_state=recorder.on_state)
    reader.start()
    recorder.wait(lambda: reader.opens >= 1)
    yield reader, recorder
    reader.stop()


def test_cold_start_without_time_waits_then_is_no_time_with_a_bounded_buffer(
        gnss_pty: PtyGnss, timing: tuple[GnssReader, Recorder]) -> None:
    reader, rec = timing
    burst = (FIXTURES / "cold_start.nmea").read_bytes()
    deadline = time.monotonic() + 8
    while GnssState.NO_TIME not in rec.states and time.monotonic() < deadline:
        gnss_pty.write(burst)  # four sentences without a time (and GSV, TXT) every 50 ms
        time.sleep(0.05)
    assert rec.states[:2] == [GnssState.WAITING_FOR_TIME, GnssState.NO_TIME], rec.states
    assert rec.fixes == []
    assert reader.decoder.pending_sentences <= 64
    assert reader.counters()["held_dropped"] > 0
    # the receiver finds the time (still no fix; a status-V RMC's date is not read, a ZDA's is)
    gnss_pty.write(epoch(_seconds(0), valid=False) + sentence("GPZDA,120000.00,25,03,2026,00,00"))
    rec.wait(lambda: reader.state is GnssState.NO_FIX)
    assert rec.fixes[-1].time_iso == "2026-03-25T12:00:00.000Z" and not rec.fixes[-1].has_position


def test_time_of_day_without_a_date_is_still_waiting_for_time(
        gnss_pty: PtyGnss, timing: tuple[GnssReader, Recorder]) -> None:
    reader, rec = timing
    for i in range(3):  # GGA quality 0 with a time, RMC status V: its date is not read
        gnss_pty.write(epoch(_seconds(i), valid=False, ddmmyy="060180"))
        time.sleep(0.1)
    rec.wait(lambda: len(rec.fixes) >= 3)
    assert all(f.time_ms is None for f in rec.fixes)
    assert reader.state is GnssState.WAITING_FOR_TIME


def test_a_learnt_cycle_releases_the_epoch_with_its_last_sentence(
        gnss_pty: PtyGnss, gnss_pty_reader_slow_quiet: tuple[GnssReader, Recorder]) -> None:
    """With a quiet gap of half a second, the epochs after the third go out on their RMC, not on the gap."""
    reader, rec = gnss_pty_reader_slow_quiet
    for i in range(6):
        gnss_pty.write(epoch(_seconds(i)))
        time.sleep(0.6 if i < 3 else 0.05)
    rec.wait(lambda: len(rec.fixes) >= 6)
    counters = reader.counters()
    assert reader.decoder.cycle_learnt
    assert counters["ended_by_ender"] == 3 and counters["ended_by_quiet"] == 3 and counters["ended_by_time"] == 0


@pytest.fixture
def gnss_pty_reader_slow_quiet(gnss_pty: PtyGnss) -> Iterator[tuple[GnssReader, Recorder]]:
    cfg = GnssConfig(port=str(gnss_pty.path), quiet_flush_ms=500, reopen_initial_s=0.05, reopen_max_s=0.2)
    recorder = Recorder()
    reader = GnssReader(cfg, on_fix=recorder.on_fix, on_state=recorder.on_state)
    reader.start()
    recorder.wait(lambda: reader.opens >= 1)
    yield reader, recorder
    reader.stop()


def test_a_receiver_repeating_one_old_epoch_is_time_frozen_then_no_time(
        gnss_pty: PtyGnss, timing: tuple[GnssReader, Recorder]) -> None:
    """A hung receiver (or adapter) that keeps sending its last epoch: not a cold start waiting for time."""
    reader, rec = timing
    for i in range(3):
        gnss_pty.write(epoch(_seconds(i)))
        time.sleep(0.3)
    rec.wait(lambda: len(rec.fixes) >= 3)
    details: list[str] = []
    deadline = time.monotonic() + 6
    while GnssState.NO_TIME not in rec.states and time.monotonic() < deadline:
        gnss_pty.write(epoch(_seconds(2)))  # the same epoch, again and again
        time.sleep(0.2)
        if reader.state is GnssState.TIME_FROZEN:
            details.append(reader.state_detail)
    assert rec.states[-2:] == [GnssState.TIME_FROZEN, GnssState.NO_TIME], rec.states
    assert GnssState.WAITING_FOR_TIME not in rec.states
    assert details and "repeats its epoch of 2026-03-25T12:00:02.000Z" in details[0]
    assert "repeats its epoch of 2026-03-25T12:00:02.000Z" in reader.state_detail
    assert "has not advanced" in reader.state_detail
    assert len(rec.fixes) == 3  # the repeats are never new fixes


def test_a_receiver_frozen_from_the_start_is_time_frozen(
        gnss_pty: PtyGnss, timing: tuple[GnssReader, Recorder]) -> None:
    """Frozen at 10 Hz from power-up: the one epoch never completes (its time never changes)."""
    reader, rec = timing
    deadline = time.monotonic() + 4
    while reader.state is not GnssState.TIME_FROZEN and time.monotonic() < deadline:
        gnss_pty.write(epoch(_seconds(7)))
        time.sleep(0.1)
    assert reader.state is GnssState.TIME_FROZEN, rec.states
    assert "repeats its epoch of 12:00:07.000 UTC" in reader.state_detail
    assert reader.decoder.pending_sentences <= 64
