"""The core: one thread that owns the unit's state and runs its components.

Runs on the daemon's main thread. Every other thread only posts typed
events (:mod:`agent.events`) on :attr:`Core.inbox`. The loop takes them one
by one and ``match``es: the core's own (stop, reload, faults from other
threads, a thread's death, the tests' introspection calls), then hands each
to every component (``handle(event, now)``), and lets time pass for them
(``tick(now)``). After each event and tick the forwarder publishes what is
new, so an alert goes out in the same turn it was raised.

Nothing here can be ended by input: an exception while handling an event is
logged with its traceback, counted, reported as an ``internal_error`` fault,
and the loop goes on. The systemd watchdog is fed from this loop, and only
while every supervised thread's heartbeat advances.
"""

from __future__ import annotations

import logging
import queue
import sys
import time
import traceback
from collections.abc import Callable, Sequence

from agent.clock import Clock
from agent.control import ControlRequest
from agent.events import Call, ConfigApplied, Event, FaultCleared, FaultRaised, Reload, Stop, ThreadDied
from agent.forwarder import Forwarder
from agent.notify import Notifier
from agent.supervisor import Supervisor
from agent.unit import Component, Faults

log = logging.getLogger(__name__)

TICK_S = 0.05
SWITCH_INTERVAL_S = 0.0002
BATCH = 500  # events handled before the periodic work runs again


class Core:
    def __init__(
        self,
        *,
        inbox: queue.Queue[Event],
        clock: Clock,
        components: Sequence[Component],
        forwarder: Forwarder,
        faults: Faults,
        supervisor: Supervisor,
        notifier: Notifier,
        reload: Callable[[], ConfigApplied | None],
        simulation: bool = False,
    ) -> None:
        self.inbox = inbox
        self._clock = clock
        self._components = components
        self._forwarder = forwarder
        self._faults = faults
        self._supervisor = supervisor
        self._notifier = notifier
        self._reload = reload
        self._simulation = simulation
        self.stopping = False
        self.errors = 0
        self._hang = False
        self._last_watchdog = float("-inf")
        self._withheld: list[str] = []

    def post(self, event: Event) -> None:
        self.inbox.put(event)

    # --- the loop ---------------------------------------------------------------

    def run(self) -> None:
        # The uplink thread can be busy for seconds draining a backlog; with the default
        # 5 ms GIL switch interval an alert waiting on this thread pays that several times.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        while not self.stopping:
            try:
                event: Event | None = self.inbox.get(timeout=TICK_S)
            except queue.Empty:
                event = None
            handled = 0
            while event is not None:
                self.dispatch(event)
                handled += 1
                if handled >= BATCH or self.stopping:
                    break
                try:
                    event = self.inbox.get_nowait()
                except queue.Empty:
                    event = None
            self.tick()

    def dispatch(self, event: Event) -> None:
        """Handle one event; whatever it raises is a reported fault, never the end of the loop."""
        now = self._clock.monotonic()
        try:
            self._handle(event, now)
        except Exception as exc:
            self._internal_error(f"handling {type(event).__name__}", exc)

    def _handle(self, event: Event, now: float) -> None:
        match event:
            case Stop():
                self.stopping = True
                return
            case Call(fn=fn, result=result):
                try:
                    result.put((True, fn()))
                except Exception as exc:  # the caller gets it back, the loop goes on
                    result.put((False, exc))
                return
            case Reload():
                applied = self._reload()
                if applied is not None:
                    self._to_components(applied, now)
                return
            case FaultRaised(code=code, detail=detail):
                self._faults.raise_(code, detail)
            case FaultCleared(code=code):
                self._faults.clear(code)
            case ThreadDied(name=name, error=error, restart_in_s=delay):
                self._faults.raise_(f"thread_died:{name}", f"{error}; restarting in {delay:g} s")
            case ControlRequest(cmd="debug_hang") if self._simulation:
                event.finish({"ok": True})
                self._hang = True  # a test's way to hang the loop: the watchdog pings must stop
            case ControlRequest(cmd="debug_raise") if self._simulation:
                self._inject(event)
            case _:
                pass
        self._to_components(event, now)
        if isinstance(event, ControlRequest) and not event.answered:
            event.finish({"ok": False, "error": f"unknown command {event.cmd!r}"})
        self._forwarder.pump()

    def _to_components(self, event: Event, now: float) -> None:
        for component in self._components:
            try:
                component.handle(event, now)
            except Exception as exc:  # one part's bug must not keep the event from the others
                self._internal_error(f"{type(component).__name__} handling {type(event).__name__}", exc)

    def tick(self) -> None:
        while self._hang:
            time.sleep(0.05)
        now = self._clock.monotonic()
        self._watchdog(now)
        for name in self._supervisor.recovered(now):
            self._faults.clear(f"thread_died:{name}")
        for component in self._components:
            try:
                component.tick(now)
            except Exception as exc:
                self._internal_error(f"{type(component).__name__} tick", exc)

    def _watchdog(self, now: float) -> None:
        interval = self._notifier.watchdog_interval_s
        if interval is None or now - self._last_watchdog < interval:
            return
        stale = self._supervisor.stale(now)
        if stale:
            if stale != self._withheld:
                log.error("watchdog withheld: no heartbeat from %s", ", ".join(stale))
            self._withheld = stale
            return
        self._withheld = []
        self._last_watchdog = now
        self._notifier.watchdog()  # from the loop itself: a hung loop stops the pings

    def _internal_error(self, where: str, exc: Exception) -> None:
        self.errors += 1
        log.error("internal error %s: %s\n%s", where, exc, traceback.format_exc().rstrip())
        try:
            self._faults.raise_("internal_error", f"{where}: {type(exc).__name__}: {exc}"[:300])
        except Exception:  # reporting itself failed (storage?): the log has it
            log.exception("could not report the internal error")

    def _inject(self, req: ControlRequest) -> None:
        """Simulation only: make a supervised thread raise, once or at every restart."""
        name = str(req.args.get("thread", ""))
        worker = self._supervisor.workers.get(name)
        if worker is None:
            req.finish({"ok": False, "error": f"no thread {name!r}; threads: {sorted(self._supervisor.workers)}"})
            return
        worker.inject(permanent=bool(req.args.get("permanent")))
        req.finish({"ok": True})
