"""Events: everything that reaches the core thread, as a closed set of types.

Every other thread (GNSS reader, GPIO callbacks, uplink, control socket,
outbox checkpointer, supervisor) talks to the core only by putting one of
these on the core's inbox and returning at once. The core loop ``match``es
over :data:`Event`; a component's ``handle(event, now)`` matches the ones it
cares about and ignores the rest.

Plain frozen dataclasses: no behaviour, safe to hand between threads.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.config import AgentConfig
from agent.control import ControlRequest
from drivers.gnss.fix import Fix
from drivers.gnss.reader import GnssState
from drivers.gpio import Edge

# --- from the GNSS reader -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class FixReceived:
    """One receiver epoch, and when (monotonic) the reader completed it."""

    fix: Fix
    at: float


@dataclass(frozen=True, slots=True)
class GnssStateChanged:
    state: GnssState
    detail: str


# --- from the uplink thread (``generation`` names the connection) ---------------


@dataclass(frozen=True, slots=True)
class LinkUp:
    generation: int
    broker: str  # URL without credentials
    protocol: str  # "5" or "3.1.1": what the broker accepted
    reconnects: int


@dataclass(frozen=True, slots=True)
class LinkDown:
    generation: int
    reason: str


@dataclass(frozen=True, slots=True)
class Acked:
    """PUBACKs of tracked messages: (token, refusal reason or None) in arrival order."""

    generation: int
    acks: tuple[tuple[int, str | None], ...]


@dataclass(frozen=True, slots=True)
class Received:
    """A message from dispatch on one of the vehicle's inbound topics."""

    generation: int
    topic: str
    payload: bytes
    retain: bool


# --- faults from any thread ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FaultRaised:
    """A fault noticed outside the core (a link set-up failure, a storage error...)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class FaultCleared:
    code: str


@dataclass(frozen=True, slots=True)
class ThreadDied:
    """A supervised thread raised; the supervisor restarts it after ``restart_in_s``."""

    name: str
    error: str
    restart_in_s: float


# --- process control ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reload:
    """SIGHUP or the ``reload_config`` command: re-read the config file."""


@dataclass(frozen=True, slots=True)
class ConfigApplied:
    """A reload took effect: components take their new slice of ``cfg`` (core thread only)."""

    cfg: AgentConfig


@dataclass(frozen=True, slots=True)
class Stop:
    """SIGTERM/SIGINT: leave the loop; the agent then shuts down in order."""


@dataclass(frozen=True, slots=True)
class Call:
    """Run ``fn`` on the core thread and hand its result back.

    The introspection seam of in-process tests and benchmarks (the core owns
    the state; reading it from another thread would race). The daemon itself
    never posts one.
    """

    fn: Callable[[], Any]
    result: queue.Queue[tuple[bool, Any]] = field(default_factory=lambda: queue.Queue(maxsize=1), compare=False)


Event = (
    FixReceived | GnssStateChanged | Edge | ControlRequest
    | LinkUp | LinkDown | Acked | Received
    | FaultRaised | FaultCleared | ThreadDied
    | Reload | ConfigApplied | Stop | Call
)

Post = Callable[[Event], None]
