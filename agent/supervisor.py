"""Supervision: every long-lived thread of the daemon is watched and restarted.

The supervisor owns the threads it starts (GNSS reader, uplink, outbox
checkpointer, control socket). Each runs ``target(worker)`` and calls
``worker.beat()`` at least every ``stale_after_s`` (every loop iteration in
practice). When a target raises, or returns while the daemon is not
stopping, the supervisor posts :class:`~agent.events.ThreadDied` to the core
(naming the thread and the exception, with its traceback in the log) and
runs the target again in the same thread after an exponential backoff
(``RESTART_INITIAL_S`` doubling to ``RESTART_MAX_S``; reset once a run has
lasted ``STABLE_S``).

The systemd watchdog is fed by the core loop only while :meth:`stale` is
empty: a thread whose heartbeat stops (hung, or dying again at every restart
so that its backoff outgrows ``stale_after_s``) stops the pings, and systemd
restarts the service. The core thread itself is covered by feeding the
watchdog from inside its loop.

Tests and the simulation can make a thread fail (:meth:`Worker.inject`):
its next beat raises :class:`InjectedFault`, once or at every beat.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from agent.events import Post, ThreadDied
from agent.threadname import name_os_thread

log = logging.getLogger(__name__)

RESTART_INITIAL_S = 0.5
RESTART_MAX_S = 60.0
STABLE_S = 60.0


class InjectedFault(RuntimeError):
    """Raised at a worker's beat on request (tests, simulation)."""


@dataclass(eq=False)
class Worker:
    """One supervised thread: its heartbeat, restarts and the fault a test injects."""

    name: str
    target: Callable[[Worker], None]
    stale_after_s: float
    clock: Callable[[], float] = time.monotonic
    last_beat: float = 0.0
    restarts: int = 0
    last_error: str | None = None
    running: bool = False
    started_at: float = 0.0  # monotonic, of the current run
    _inject: str | None = field(default=None, repr=False)  # "once" | "always"
    thread: threading.Thread | None = field(default=None, repr=False)

    def beat(self) -> None:
        """Proof of progress; call it at least every ``stale_after_s``."""
        mode = self._inject
        if mode is not None:
            if mode == "once":
                self._inject = None
            raise InjectedFault(f"fault injected into {self.name}")
        self.last_beat = self.clock()

    def inject(self, *, permanent: bool = False) -> None:
        self._inject = "always" if permanent else "once"


class Supervisor:
    """Starts, watches and restarts the daemon's threads."""

    def __init__(self, post: Post, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._post = post
        self._clock = clock
        self._stop = threading.Event()
        self.workers: dict[str, Worker] = {}

    def spawn(self, name: str, target: Callable[[Worker], None], *, stale_after_s: float = 10.0) -> Worker:
        worker = Worker(name, target, stale_after_s, clock=self._clock)
        worker.last_beat = self._clock()
        worker.thread = threading.Thread(target=self._keep, args=(worker,), name=name, daemon=True)
        self.workers[name] = worker
        worker.thread.start()
        return worker

    def _keep(self, worker: Worker) -> None:
        name_os_thread(worker.name)
        delay = RESTART_INITIAL_S
        while not self._stop.is_set():
            started = self._clock()  # no beat here: only the target's own progress counts
            worker.started_at = started
            worker.running = True
            try:
                worker.target(worker)
                if self._stop.is_set():
                    return
                error = "returned unexpectedly"
            except Exception as exc:  # any bug: reported, then the thread runs again
                if self._stop.is_set():
                    return
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("thread %s died: %s\n%s", worker.name, error, traceback.format_exc().rstrip())
            finally:
                worker.running = False
            if self._clock() - started >= STABLE_S:
                delay = RESTART_INITIAL_S
            worker.restarts += 1
            worker.last_error = error
            self._post(ThreadDied(worker.name, error, delay))
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_S)
            log.warning("thread %s restarting (restart %d)", worker.name, worker.restarts)

    def stale(self, now: float | None = None) -> list[str]:
        """Names of the threads whose heartbeat is older than their limit."""
        now = self._clock() if now is None else now
        return [w.name for w in self.workers.values() if now - w.last_beat > w.stale_after_s]

    def stop(self) -> None:
        """From now on a thread that returns is not restarted (callers stop each target first)."""
        self._stop.set()

    def join(self, timeout: float = 3.0) -> None:
        deadline = self._clock() + timeout
        for worker in self.workers.values():
            if worker.thread is not None:
                worker.thread.join(max(0.0, deadline - self._clock()))

    def recovered(self, now: float | None = None) -> list[str]:
        """Threads that died once but have now run for ``STABLE_S`` and are beating."""
        now = self._clock() if now is None else now
        return [w.name for w in self.workers.values()
                if w.restarts and w.running and now - w.started_at >= STABLE_S and now - w.last_beat <= w.stale_after_s]

    def snapshot(self) -> dict[str, dict[str, object]]:
        now = self._clock()
        return {name: {"alive": w.running, "restarts": w.restarts, "last_error": w.last_error,
                       "beat_age_s": round(now - w.last_beat, 2)} for name, w in self.workers.items()}
