"""An epoch that reaches us in two bursts: the RMC, then tens of ms later the GGA of the same time.

USB and Bluetooth serial adapters deliver a receiver's bytes in chunks, and some receivers compute their GGA
after their RMC. A quiet line between the two is not the end of the epoch: the GGA (here one saying the
solution uses no satellite, a stale or dead-reckoned one) must be part of it, and the receiver's cycle must
be learnt as ending with the GGA. Through a real pty and the real GnssReader, and through the daemon.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.config import GnssConfig
from drivers.gnss import Fix, NmeaDecoder
from drivers.gnss.reader import GnssReader
from tests.support.agent_proc import AgentProcess, agent_config, positions
from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
from tests.support.nmea import sentence
from tests.support.pty_gnss import PtyGnss

P = "4241.8627,N,02319.3140,E"


def split_epoch(when: datetime, sats: int) -> tuple[bytes, bytes]:
    hms = when.strftime("%H%M%S") + ".00"
    rmc = sentence(f"GPRMC,{hms},A,{P},20.0,90.0,{when:%d%m%y},,,A")
    gga = sentence(f"GPGGA,{hms},{P},1,{sats:02d},{'0.9' if sats else '99.9'},560.0,M,37.8,M,,")
    return rmc.encode(), gga.encode()


def play(device: PtyGnss, stop: threading.Event, *, gap: float, period: float, sats: int, epochs: int) -> None:
    """RMC, ``gap`` seconds of silence, GGA; one epoch every ``period`` seconds of real time."""
    start = datetime.now(UTC).replace(microsecond=0)
    began = time.monotonic()
    for i in range(epochs):
        if stop.is_set():
            return
        time.sleep(max(0.0, began + i * period - time.monotonic()))
        rmc, gga = split_epoch(start + timedelta(seconds=i), sats)
        device.write(rmc)
        time.sleep(gap)
        device.write(gga)


class Fixes:
    def __init__(self) -> None:
        self.fixes: list[tuple[float, Fix]] = []
        self.lock = threading.Lock()

    def on_fix(self, fix: Fix) -> None:
        with self.lock:
            self.fixes.append((time.monotonic(), fix))


@pytest.fixture
def reader(gnss_pty: PtyGnss) -> Iterator[tuple[GnssReader, Fixes]]:
    got = Fixes()
    gnss = GnssReader(GnssConfig(port=str(gnss_pty.path)), on_fix=got.on_fix)
    gnss.start()
    deadline = time.monotonic() + 5
    while gnss.opens == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)  # pyserial flushes the input as it opens
    yield gnss, got
    gnss.stop()


@pytest.mark.parametrize("gap", [0.06, 0.12])
def test_a_stale_solution_in_two_bursts_is_never_a_fix(gnss_pty: PtyGnss, reader: tuple[GnssReader, Fixes],
                                                        gap: float) -> None:
    gnss, got = reader
    play(gnss_pty, threading.Event(), gap=gap, period=0.5, sats=0, epochs=10)
    time.sleep(0.6)
    fixes = [fix for _, fix in got.fixes]
    assert len(fixes) == 10  # every epoch, once
    assert [f for f in fixes if f.has_position] == []
    assert all(f.no_fix_reason == "no satellites used" and f.sats_used == 0 for f in fixes)
    assert gnss.counters()["late"] == 0


def test_a_fix_in_two_bursts_goes_out_whole_and_at_its_gga_once_learnt(
        gnss_pty: PtyGnss, reader: tuple[GnssReader, Fixes]) -> None:
    gnss, got = reader
    play(gnss_pty, threading.Event(), gap=0.06, period=0.5, sats=9, epochs=10)
    time.sleep(0.6)
    assert len(got.fixes) == 10
    assert all(f.mode == 3 and f.sats_used == 9 and f.alt_msl == 560.0 for _, f in got.fixes)  # the GGA is in
    counters = gnss.counters()
    assert counters["late"] == 0 and counters["ended_by_ender"] >= 5  # released by the GGA once learnt
    assert gnss.decoder.cycle_learnt


def test_while_learning_a_5hz_receiver_each_epoch_goes_out_on_its_own(
        gnss_pty: PtyGnss, reader: tuple[GnssReader, Fixes]) -> None:
    """While the cycle is learnt the quiet gap is generous, but never a whole period: an epoch held until the
    next one's time would go out together with it once the cycle is learnt (one of two fixes a few ms apart
    is what a rate-limited report drops)."""
    gnss, got = reader
    start = datetime.now(UTC).replace(microsecond=0)
    for i in range(12):
        when = start + timedelta(seconds=i / 5)
        hms = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
        gnss_pty.write(sentence(f"GPRMC,{hms},A,{P},20.0,90.0,{when:%d%m%y},,,A")
                       + sentence(f"GPGGA,{hms},{P},1,09,0.9,560.0,M,37.8,M,,"))
        time.sleep(0.2)
    time.sleep(0.3)
    counters = gnss.counters()
    assert len(got.fixes) == 12 and counters["late"] == 0
    assert counters["ended_by_time"] <= 1, counters  # the first, before the receiver's rate is known


def test_the_decoder_learns_the_late_sentence_as_the_end_of_the_cycle() -> None:
    """Without the reader's timing: the line goes quiet after the RMC (flush), the GGA comes after it."""
    decoder = NmeaDecoder()
    start = datetime(2025, 3, 9, 14, 0, 0, tzinfo=UTC)
    out: list[Fix] = []
    for i in range(6):
        rmc, gga = split_epoch(start + timedelta(seconds=i), 9)
        out += decoder.feed(rmc)
        if not decoder.cycle_learnt:
            out += decoder.flush()  # the quiet gap after the first burst
        out += decoder.feed(gga)
    counters = decoder.counters
    assert counters.split_epochs >= 1  # the first epoch went out before its GGA: seen and counted
    assert decoder.cycle_learnt and counters.ended_by_ender >= 2


def test_through_the_daemon_a_stale_solution_in_two_bursts_is_never_sent_as_live(
        tmp_path: Path, broker: Mosquitto, gnss_pty: PtyGnss) -> None:
    dispatch = Collector(broker.port, "patrol/+/position", client_id="split-dispatch")
    agent = AgentProcess(tmp_path, agent_config(tmp_path, broker.port, gnss_pty.path,
                                                reporting__moving_interval_s=1, reporting__stopped_interval_s=1))
    agent.start()
    stop = threading.Event()
    feeder = threading.Thread(target=play, args=(gnss_pty, stop),
                              kwargs={"gap": 0.06, "period": 1.0, "sats": 0, "epochs": 9}, daemon=True)
    feeder.start()
    try:
        feeder.join(12)
        time.sleep(0.5)
        sent = positions(dispatch.messages)
        assert len(sent) >= 5  # positions were published, each without a live fix
        live = [p for p in sent if p["fix"] is not None]
        assert live == [], f"{len(live)} of {len(sent)} positions sent a 0-satellite solution as a live fix"
    finally:
        stop.set()
        agent.kill9()
        dispatch.close()


def test_sentences_without_a_time_in_the_late_burst_belong_to_the_epoch_that_went_out() -> None:
    """The second burst begins with a GSA (no time): it is the split epoch's tail, not the next epoch's head;
    the cycle learns the GLL that ends the tail, never the RMC."""
    decoder = NmeaDecoder()
    start = datetime(2025, 3, 9, 14, 0, 0, tzinfo=UTC)
    out: list[Fix] = []
    for i in range(8):
        hms = (start + timedelta(seconds=i)).strftime("%H%M%S") + ".00"
        out += decoder.feed(sentence(f"GPRMC,{hms},A,{P},20.0,90.0,090325,,,A").encode())
        if i < 4:
            out += decoder.flush()  # the quiet gap after the first burst, while the reader learns
        tail = ["GPGSA,A,3,01,03,06,09,,,,,,,,,2.1,1.2,1.7", f"GPGGA,{hms},{P},1,09,0.9,560.0,M,37.8,M,,",
                "GPVTG,87.1,T,,M,12.3,N,22.8,K,A", f"GPGLL,{P},{hms},A,A"]
        for line in tail:
            out += decoder.feed(sentence(line).encode())
    assert decoder.cycle_learnt
    counters = decoder.counters
    assert counters.split_epochs == 4 and counters.cycle_violations == 0
    assert counters.ended_by_ender == 4  # epochs 4 to 7, each on its GLL
    assert all(f.sats_used == 9 and f.alt_msl == 560.0 for f in out[4:])
