"""The end of a receiver's cycle, learnt: an epoch goes out with its last sentence, never before it.

Decoder level, no timing: ``feed`` returns the epoch when its ender arrives; the quiet-line flush of the
reader is never called here except where said.
"""

from __future__ import annotations

from drivers.gnss import Fix, NmeaDecoder
from tests.support.nmea import sentence

P = "4404.1237,N,01213.8476,E"


def ublox(second: int, *, gsa: int = 4, zda: bool = True, gsv: bool = True) -> list[str]:
    hms = f"1200{second:02d}.00"
    lines = [f"GNRMC,{hms},A,{P},0.1,12.0,020325,,,A,V", "GNVTG,12.0,T,,M,0.1,N,0.2,K,A",
             f"GNGGA,{hms},{P},1,12,0.6,34.0,M,45.1,M,,"]
    lines += [f"GNGSA,A,3,02,05,08,,,,,,,,,,1.0,0.6,0.8,{i + 1}" for i in range(gsa)]
    if gsv:
        lines += ["GPGSV,2,1,06,02,51,278,26,07,40,274,18,08,77,310,32,10,52,059,30",
                  "GPGSV,2,2,06,14,35,120,30,23,13,040,43"]
    lines.append(f"GNGLL,{P},{hms},A,A")
    if zda:
        lines.append(f"GNZDA,{hms},02,03,2025,00,00")
    return [sentence(line) for line in lines]


def feed_lines(decoder: NmeaDecoder, lines: list[str]) -> list[list[Fix]]:
    """What each sentence released."""
    return [decoder.feed(line.encode()) for line in lines]


def test_after_three_epochs_the_last_sentence_releases_the_epoch() -> None:
    decoder = NmeaDecoder()
    for second in range(3):
        feed_lines(decoder, ublox(second))
    assert not decoder.cycle_learnt  # two epochs ended (by the next time), the third is open
    released = feed_lines(decoder, ublox(3))
    assert decoder.cycle_learnt
    assert [len(r) for r in released[:-1]] == [1] + [0] * (len(released) - 2)  # the RMC closes epoch 2 by time
    assert len(released[-1]) == 1 and released[-1][0].time_iso == "2025-03-02T12:00:03.000Z"  # the ZDA: epoch 3
    assert released[-1][0].mode == 3 and not decoder.epoch_pending
    released = feed_lines(decoder, ublox(4))
    assert [len(r) for r in released] == [0] * (len(released) - 1) + [1]  # from now on only the ender releases
    counters = decoder.counters
    assert counters.ended_by_ender == 2 and counters.late == 0 and counters.cycle_violations == 0


def test_a_zda_every_fourth_epoch_costs_one_late_zda_then_the_gll_is_distrusted() -> None:
    """ZDA after GLL in one epoch of four: GLL looks like the end until a ZDA follows it. That epoch went out
    without its ZDA (it had its date from the RMC anyway); GLL is struck and needs 12 epochs in a row, which
    this receiver never gives: it stays on the time/quiet ending."""
    decoder = NmeaDecoder()
    fixes: list[Fix] = []
    for second in range(1, 41):
        for released in feed_lines(decoder, ublox(second, zda=second % 4 == 0)):
            fixes += released
    fixes += decoder.flush()
    assert len(fixes) == 40 and all(f.has_position and f.mode == 3 for f in fixes)
    assert [f.time_iso[17:19] for f in fixes if f.time_iso] == [f"{s:02d}" for s in range(1, 41)]
    counters = decoder.counters
    assert counters.cycle_violations == 1 and counters.late == 1
    assert not decoder.cycle_learnt


def test_a_varying_number_of_gsas_at_the_end_does_not_cut_an_epoch_twice() -> None:
    """A cycle ending with one GSA per system: a fifth system appears now and then."""
    decoder = NmeaDecoder()
    gsas = [4, 4, 4, 4, 5, 4, 4, 4, 4, 4, 5, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 5]
    fixes: list[Fix] = []
    for second, count in enumerate(gsas):
        hms = f"1200{second:02d}.00"
        lines = [f"GPGGA,{hms},{P},1,12,0.6,34.0,M,45.1,M,,", f"GPRMC,{hms},A,{P},0.1,12.0,020325,,,A"]
        lines += [f"GNGSA,A,3,02,05,08,,,,,,,,,,1.0,0.6,0.8,{i + 1}" for i in range(count)]
        for released in feed_lines(decoder, [sentence(line) for line in lines]):
            fixes += released
    fixes += decoder.flush()
    assert len(fixes) == len(gsas) and all(f.mode == 3 for f in fixes)
    counters = decoder.counters
    # the 4th GSA ended 3 epochs, then 12 in a row after its first strike: two strikes, one late GSA each
    assert counters.cycle_violations == 2 and counters.late == 2
    assert counters.ended_by_ender == 5  # epochs 3 and 4 (cut short), 23, 24 and 25 (cut short)


def test_a_1hz_gsv_burst_in_a_5hz_stream_does_not_matter() -> None:
    decoder = NmeaDecoder()
    fixes: list[Fix] = []
    for i in range(25):
        hms = f"1200{i // 5:02d}.{(i % 5) * 2}0"
        lines = [f"GNGGA,{hms},{P},1,12,0.6,34.0,M,45.1,M,,", f"GNRMC,{hms},A,{P},0.1,12.0,020325,,,A"]
        if i % 5 == 0:
            lines += ["GPGSV,2,1,06,02,51,278,26,07,40,274,18,08,77,310,32,10,52,059,30",
                      "GPGSV,2,2,06,14,35,120,30,23,13,040,43"]
        for released in feed_lines(decoder, [sentence(line) for line in lines]):
            fixes += released
    assert len(fixes) == 25  # the last one too: released by its RMC
    assert decoder.counters.ended_by_ender == 22 and decoder.counters.cycle_violations == 0


def test_a_gsa_after_the_learnt_end_counts_as_late_and_unlearns() -> None:
    decoder = NmeaDecoder()
    for second in range(4):
        feed_lines(decoder, ublox(second))
    assert decoder.cycle_learnt
    late_gsa = sentence("GNGSA,A,3,02,05,08,,,,,,,,,,1.0,0.6,0.8,1")
    assert decoder.feed(late_gsa.encode()) == []
    assert not decoder.cycle_learnt and decoder.counters.late == 1 and decoder.counters.cycle_violations == 1
    released = feed_lines(decoder, ublox(4))  # the next epoch is whole and correct
    fixes = [f for r in released for f in r] + decoder.flush()
    assert len(fixes) == 1 and fixes[0].time_iso == "2025-03-02T12:00:04.000Z" and fixes[0].mode == 3


def test_no_fix_epochs_do_not_teach_a_shorter_cycle() -> None:
    """Without a fix this receiver leaves out its GSA and GLL; the ender learnt with a fix (ZDA) stays."""
    decoder = NmeaDecoder()
    for second in range(4):
        feed_lines(decoder, ublox(second))
    for second in range(4, 10):
        hms = f"1200{second:02d}.00"
        feed_lines(decoder, [sentence(f"GNRMC,{hms},V,,,,,,,020325,,,N,V"),
                             sentence(f"GNGGA,{hms},,,,,0,00,99.9,,,,,,")])
    fixes = [f for r in feed_lines(decoder, ublox(10)) for f in r]
    assert [f.time_iso[17:19] for f in fixes if f.time_iso] == ["09", "10"]
    assert fixes[-1].has_position and decoder.counters.late == 0


def test_learning_can_be_turned_off() -> None:
    decoder = NmeaDecoder(learn_cycle=False)
    for second in range(6):
        feed_lines(decoder, ublox(second))
    assert not decoder.cycle_learnt and decoder.epoch_pending
    assert len(decoder.flush()) == 1
