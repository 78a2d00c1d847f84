"""The GNSS reader: a serial port in, Fixes and state changes out.

Runs one daemon thread of its own ("gnss-reader"). It opens the port with
pyserial (a real tty, a pty, or any pyserial URL), feeds the bytes to an
:class:`NmeaDecoder`, and hands each Fix to ``on_fix`` and each change of
receiver state to ``on_state``. Both callbacks must return at once (the agent
puts an event on its queue); an exception in one is logged, never fatal.
Each turn of its loop waits at most 0.25 s.

An epoch goes out as soon as the sentence that closes the receiver's cycle
arrives, once that sentence is learnt (drivers/gnss/cycle.py); until then,
and for receivers whose cycle varies, it goes out when the line has been
quiet for a while. How long:

- while the cycle is being learnt (the first fix epochs of a stream), a
  generous ``_SETTLING_QUIET_S``, or half the receiver's period if that is
  shorter: a USB or Bluetooth adapter delivers an epoch in chunks, a
  receiver may send its GGA well after its RMC, and an epoch cut short there
  would teach the wrong end of cycle and go out without the sentence that
  says its fix is stale. (Half a period, not the next epoch's time: an epoch
  closed by the next one's time would go out moments before that one, once
  the cycle is learnt, and two fixes so close together look like one to
  whoever rate-limits them.)
- afterwards, for a receiver whose cycle cannot be learnt,
  ``gnss.quiet_flush_ms``, doubled (up to ``_MAX_QUIET_S``) each time a
  sentence arrives for an epoch a quiet line had already closed;
- with a learnt cycle, an epoch whose ender is late waits
  ``_LEARNT_QUIET_FACTOR`` times that gap (0.25 s at most) before the quiet
  line closes it. The next epoch's time closes it in any case.

A cold start without time is a state: sentences arrive but none carries a
date and time (``waiting_for_time``). A receiver that keeps sending one old
epoch (its time frozen: a hung firmware, a replaying adapter) is another:
``time_frozen``, with the time it repeats. After ``gnss.no_time_after_s``
either is ``no_time``, which the core reports as a fault, its detail saying
which. The sentences held meanwhile are bounded (the decoder counts the ones
it drops).

The device may vanish at any moment (a USB receiver knocked out by a knee):
the reader reports it, closes the port and reopens it with exponential
backoff, for as long as it runs. Nothing the receiver sends can stop it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

import serial

from agent.config import GnssConfig
from drivers.gnss.decoder import NmeaDecoder
from drivers.gnss.fix import Fix

log = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.25  # how often the thread looks at its clock when the line is silent
_LEARNT_QUIET_FACTOR = 5  # with a learnt cycle, a missing ender waits this many quiet gaps
_SETTLING_QUIET_S = 0.25  # the quiet gap while the cycle is being learnt
_MAX_QUIET_S = 0.5  # widened on split epochs up to this: beyond it, the next epoch's time closes the epoch
_TIME_GRACE_S = 3.0  # sentences but no timed epoch for this long (a few cycles) mean waiting for time


class GnssState(StrEnum):
    OPENING = "opening"  # starting, or the port just opened and nothing has come yet
    DEVICE_MISSING = "device_missing"  # cannot open: absent, unplugged, no permission
    NO_DATA = "no_data"  # open, but silent
    NO_NMEA = "no_nmea"  # bytes, but no valid sentence: usually the wrong baud rate
    WAITING_FOR_TIME = "waiting_for_time"  # sentences, but none carries a date and time (cold start)
    TIME_FROZEN = "time_frozen"  # sentences, but the receiver repeats one epoch: its time does not advance
    NO_TIME = "no_time"  # either, for longer than gnss.no_time_after_s: a fault
    NO_FIX = "no_fix"  # sentences with a time, but the receiver has no position
    FIX = "fix"


class Heartbeat(Protocol):
    def beat(self) -> None: ...


def _no_beat() -> None:
    pass


class SerialPort(Protocol):
    in_waiting: int

    def read(self, size: int = 1) -> bytes: ...
    def close(self) -> None: ...
    def fileno(self) -> int: ...


SerialFactory = Callable[..., Any]


def open_serial(port: str, baudrate: int) -> Any:
    """The real thing: pyserial, non-blocking, exclusive (one reader per port)."""
    return serial.serial_for_url(port, baudrate=baudrate, timeout=0, exclusive=True)


class GnssReader:
    """Owns the serial port and its thread."""

    def __init__(
        self,
        cfg: GnssConfig,
        *,
        on_fix: Callable[[Fix], None],
        on_state: Callable[[GnssState, str], None] | None = None,
        serial_factory: SerialFactory = open_serial,
        clock: Callable[[], float] = time.monotonic,
        learn_cycle: bool = True,
    ) -> None:
        """``learn_cycle=False`` keeps the quiet-line end of epoch only (the benchmark's baseline)."""
        self._cfg = cfg
        self._on_fix = on_fix
        self._on_state = on_state
        self._open = serial_factory
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat: Callable[[], None] = _no_beat
        self.decoder = NmeaDecoder(default_day=cfg.default_date, learn_cycle=learn_cycle)
        self.state = GnssState.OPENING
        self.state_detail = ""
        self.opens = 0
        self.disconnects = 0
        self.last_fix: Fix | None = None
        self.last_fix_at: float | None = None  # monotonic
        self._time_at = 0.0  # monotonic: port opened, or the last epoch with a time or a position
        self._late_mark = 0  # the decoder's late count at the last epoch with a time
        self._last_time: str | None = None  # that epoch's time
        self._time_grace_s = min(_TIME_GRACE_S, cfg.no_time_after_s / 2)

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """A thread of its own (standalone use); the daemon runs :meth:`run` under its supervisor."""
        self._thread = threading.Thread(target=self.run, name="gnss-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self, worker: Heartbeat | None = None) -> None:
        """The thread's body; ``worker.beat()`` is called at least every quarter second."""
        self._beat = worker.beat if worker is not None else _no_beat
        self._run()

    def counters(self) -> dict[str, int]:
        counts = self.decoder.counters.as_dict()
        counts.update(opens=self.opens, disconnects=self.disconnects)
        return counts

    # --- the thread -----------------------------------------------------------

    def _run(self) -> None:
        delay = self._cfg.reopen_initial_s
        while not self._stop.is_set():
            self._beat()
            try:
                port = self._open(self._cfg.port, self._cfg.baudrate)
            except (serial.SerialException, OSError, ValueError) as exc:
                self._set_state(GnssState.DEVICE_MISSING, f"cannot open {self._cfg.port}: {_reason(exc)}")
                self._wait(delay)
                delay = min(delay * 2, self._cfg.reopen_max_s)
                continue
            self.opens += 1
            delay = self._cfg.reopen_initial_s
            log.info("GNSS device %s open at %d baud", self._cfg.port, self._cfg.baudrate)
            try:
                self._read(port)
            except (serial.SerialException, OSError) as exc:
                self.disconnects += 1
                self._set_state(GnssState.DEVICE_MISSING, f"{self._cfg.port} lost: {_reason(exc)}")
            finally:
                _close_quietly(port)
            self._deliver(self.decoder.flush())
            self._wait(delay)

    def _wait(self, seconds: float) -> None:
        deadline = self._clock() + seconds
        while not self._stop.is_set() and self._clock() < deadline:
            self._beat()
            self._stop.wait(min(_IDLE_WAIT_S, max(0.0, deadline - self._clock())))

    def _read(self, port: Any) -> None:
        self._set_state(GnssState.OPENING, "port open, waiting for data", level=logging.INFO)
        self.decoder.forget_cycle()
        now = self._clock()
        last_bytes = last_sentence = opened = self._time_at = now
        quiet_s = self._cfg.quiet_flush_ms / 1000
        fileno = _fileno(port)
        decoder = self.decoder
        splits = decoder.split_epochs
        while not self._stop.is_set():
            self._beat()
            wait = self._quiet_gap(quiet_s) if decoder.epoch_pending else _IDLE_WAIT_S
            data = _read_available(port, fileno, wait)
            now = self._clock()
            if data:
                before = decoder.sentences
                self._deliver(decoder.feed(data))
                if decoder.split_epochs != splits:  # the line was quiet, but the epoch was not over
                    splits = decoder.split_epochs
                    wider = min(_MAX_QUIET_S, max(2 * quiet_s, 1.5 * (now - last_bytes)))
                    if wider > quiet_s and now - last_bytes < _MAX_QUIET_S:  # (longer: a repeat, not a split)
                        log.info("GNSS epochs arrive in bursts %.0f ms apart: waiting up to %.0f ms for the rest",
                                 1000 * (now - last_bytes), 1000 * wider)
                        quiet_s = wider
                last_bytes = now
                if decoder.sentences != before:
                    if now - last_sentence > self._time_grace_s:
                        self._time_at = max(self._time_at, now)  # talking again after a silence: a new start
                    last_sentence = now
            elif decoder.epoch_pending:
                self._deliver(decoder.flush())  # the line went quiet: the epoch is complete
            self._check_silence(now, max(last_bytes, opened), max(last_sentence, opened))

    def _quiet_gap(self, quiet_s: float) -> float:
        """How long a quiet line must last to close the open epoch."""
        if self.decoder.cycle_learnt:
            return max(quiet_s, min(_IDLE_WAIT_S, quiet_s * _LEARNT_QUIET_FACTOR))
        if self.decoder.cycle_settling:
            period = self.decoder.epoch_period_s
            return max(quiet_s, _SETTLING_QUIET_S if period is None else min(_SETTLING_QUIET_S, period / 2))
        return quiet_s

    def _check_silence(self, now: float, last_bytes: float, last_sentence: float) -> None:
        if now - last_bytes > self._cfg.no_data_after_s:
            self._set_state(GnssState.NO_DATA, f"no data from {self._cfg.port} for {now - last_bytes:.0f} s")
        elif now - last_sentence > self._cfg.no_nmea_after_s:
            self._set_state(
                GnssState.NO_NMEA,
                f"bytes but no valid NMEA for {now - last_sentence:.0f} s "
                f"(wrong baud rate? configured {self._cfg.baudrate})",
            )
        elif now - self._time_at > self._time_grace_s and now - last_sentence < self._time_grace_s:
            self._no_time(now)

    def _no_time(self, now: float) -> None:
        waited = now - self._time_at
        frozen = self._frozen_at()
        if frozen is not None:
            detail = f"the receiver repeats its epoch of {frozen}: its time has not advanced for {waited:.0f} s"
            self._set_state(GnssState.NO_TIME if waited >= self._cfg.no_time_after_s else GnssState.TIME_FROZEN,
                            detail)
        elif waited >= self._cfg.no_time_after_s:
            self._set_state(GnssState.NO_TIME, f"no date and time from the receiver for {waited:.0f} s")
        else:
            self._set_state(GnssState.WAITING_FOR_TIME, "sentences without a date and time (cold start?)",
                            level=logging.INFO)

    def _frozen_at(self) -> str | None:
        """The time a frozen receiver repeats: sentences keep coming for the epoch that went out last, or for
        one that never completes because its time never changes."""
        if self._last_time is not None and self.decoder.late > self._late_mark:
            return self._last_time
        tod = self.decoder.pending_tod_ms
        if tod is not None:
            seconds = tod // 1000
            return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{tod % 1000:03d} UTC"
        return None

    def _deliver(self, fixes: list[Fix]) -> None:
        for fix in fixes:
            now = self._clock()
            if fix.time_ms is not None:
                self._late_mark, self._last_time = self.decoder.late, fix.time_iso
            if fix.has_position:
                self.last_fix, self.last_fix_at = fix, now
                self._time_at = now
                self._set_state(GnssState.FIX, f"{fix.mode}D fix")
            elif fix.time_ms is not None:
                self._time_at = now
                self._set_state(GnssState.NO_FIX, f"receiver reports no fix ({fix.no_fix_reason})")
            else:
                self._no_time(now)
            try:
                self._on_fix(fix)
            except Exception:
                log.exception("on_fix callback failed")

    def _set_state(self, state: GnssState, detail: str, *, level: int | None = None) -> None:
        if state is self.state and (state is GnssState.FIX or detail == self.state_detail):
            return
        changed = state is not self.state
        self.state, self.state_detail = state, detail
        if changed:
            if level is None:
                level = logging.INFO if state in (GnssState.FIX, GnssState.NO_FIX) else logging.WARNING
            log.log(level, "GNSS %s: %s", state.value, detail)
            if self._on_state is not None:
                try:
                    self._on_state(state, detail)
                except Exception:
                    log.exception("on_state callback failed")


def _fileno(port: Any) -> int | None:
    try:
        return int(port.fileno())
    except (AttributeError, OSError, ValueError, serial.SerialException):
        return None  # e.g. pyserial's loop:// has no descriptor


def _read_available(port: Any, fileno: int | None, wait: float) -> bytes:
    """Wait up to ``wait`` seconds for bytes; return all that are there."""
    if fileno is None:
        port.timeout = wait
        data: bytes = port.read(4096)
        return data
    ready, _, _ = select.select([fileno], [], [], wait)
    if not ready:
        return b""
    waiting = port.in_waiting
    data = port.read(waiting or 1)  # raises SerialException when the device is gone
    return data


def _close_quietly(port: Any) -> None:
    with contextlib.suppress(Exception):  # a vanished device may fail to close; nothing to do
        port.close()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.split("\n")[0][:160]
