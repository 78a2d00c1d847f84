"""The link's policy: which broker and MQTT version to try next, how long to wait, what is a fault.

Pure decisions, no I/O: owned and called by the uplink thread (and tests)
with the monotonic clock.

- Brokers are tried in turn: the next one after a failure, the same one
  after a good connection.
- The wait before an attempt is exponential backoff with full jitter,
  ``uniform(0, min(backoff_max_s, backoff_initial_s * 2**failures))``, reset
  once a connection has lasted ``stable_after_s``. While an alert waits to be
  delivered the wait is at most ``alert_retry_s`` (and the first attempt
  after it is raised is immediate): an officer's alarm must not sit out a
  back-off built up in a tunnel.
- ``protocol: auto`` starts with MQTT 5 and, for a broker that was reached
  but answered no CONNACK to it (NATS and older RabbitMQ close the
  connection) or refused the version, tries 3.1.1 next; once a version has
  worked it is kept for that broker. A pinned version that the broker
  refuses is a ``protocol_refused`` fault.
- A connection closed by the broker with MQTT 5's "session taken over", or
  closed within seconds of connecting three times running, is a
  ``session_taken_over`` fault: another client is using this vehicle's id.
  A refused CONNECT (not authorised...) is a ``broker_refused`` fault.
"""

from __future__ import annotations

import random
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from agent.config import MqttConfig

KICK_WITHIN_S = 5.0  # a connection closed this soon after CONNACK counts as a kick
KICKS = 3


@dataclass(frozen=True, slots=True)
class Broker:
    url: str
    host: str
    port: int
    tls: bool

    @property
    def display(self) -> str:
        """The URL without any credentials, for logs and health."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def parse(cls, url: str) -> Broker:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname or "", parts.port or (8883 if tls else 1883), tls)


@dataclass(slots=True)
class Verdict:
    faults: list[tuple[str, str]] = field(default_factory=list)
    cleared: list[str] = field(default_factory=list)


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """TLS 1.2+ (or 1.3), the broker's certificate verified against the CA, hostname checked."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if cfg.tls.cert_file is not None:
        ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None)
    return ctx


def describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason == "KEY_VALUES_MISMATCH":
            return "the private key does not match the certificate"
        return f"TLS error: {reason}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}"
    return str(exc) or type(exc).__name__


class LinkPolicy:
    def __init__(self, cfg: MqttConfig, rng: random.Random, clock: Callable[[], float]) -> None:
        self._cfg = cfg
        self._rng = rng
        self._clock = clock
        self.brokers = [Broker.parse(url) for url in cfg.brokers]
        self._index = 0
        self._failures = 0
        self._urgent = False
        self._kicks = 0
        self._protocol: dict[str, str] = {}  # broker url -> version that worked (auto)
        self._try: dict[str, str] = {}  # broker url -> version to try next (auto)
        self.connections = 0

    # --- what next ------------------------------------------------------------------

    def next_attempt(self) -> tuple[Broker, str]:
        broker = self.brokers[self._index % len(self.brokers)]
        return broker, self.protocol_for(broker)

    def protocol_for(self, broker: Broker) -> str:
        if self._cfg.protocol != "auto":
            return self._cfg.protocol
        return self._protocol.get(broker.url) or self._try.get(broker.url, "5")

    def delay(self, lasted: float) -> float:
        """Seconds to wait before the next attempt, after one that was up ``lasted`` seconds."""
        cfg = self._cfg
        ceiling = cfg.backoff_initial_s if not self._failures else min(
            cfg.backoff_max_s, cfg.backoff_initial_s * 2 ** min(self._failures, 16))
        wait = self._rng.uniform(0, ceiling)
        return min(wait, cfg.alert_retry_s) if self._urgent else wait

    def set_urgent(self, urgent: bool) -> bool:
        """True when an alert has just started waiting: try at once."""
        became = urgent and not self._urgent
        self._urgent = urgent
        return became

    # --- what happened ----------------------------------------------------------------

    def connected(self, broker: Broker, protocol: str) -> int:
        """CONNACK accepted; returns the number of reconnections so far."""
        self.connections += 1
        if self._cfg.protocol == "auto":
            self._protocol[broker.url] = protocol
        return self.connections - 1

    def attempt_ended(self, broker: Broker, *, reached: bool, was_up: bool, lasted: float,
                      refused: str | None, taken_over: bool) -> Verdict:
        verdict = Verdict()
        if was_up and lasted >= self._cfg.stable_after_s:
            self._failures = 0
            self._kicks = 0
            verdict.cleared += ["session_taken_over", "broker_refused", "protocol_refused"]
        else:
            self._failures += 1
            self._index += 1 if not was_up else 0  # next broker after a failure to connect
        if was_up:
            verdict.cleared += ["broker_refused", "protocol_refused"]
            self._kicks = self._kicks + 1 if lasted < KICK_WITHIN_S else 0
            if taken_over or self._kicks >= KICKS:
                why = ("the broker handed this vehicle's session to another client" if taken_over else
                       f"the broker closed the connection within {KICK_WITHIN_S:g} s of connecting "
                       f"{self._kicks} times running")
                verdict.faults.append(("session_taken_over", f"{why}: another client may be using client id "
                                                             "of this vehicle (check the broker's client-id binding)"))
            return verdict
        version_refused = refused is not None and ("protocol" in refused.lower() or "version" in refused.lower())
        if refused is not None and not version_refused:
            verdict.faults.append(("broker_refused", f"{broker.display}: {refused}"))
        if reached and self._cfg.protocol == "auto" and broker.url not in self._protocol:
            if version_refused or refused is None:  # closed without a CONNACK: try the other version next
                self._try[broker.url] = "3.1.1" if self.protocol_for(broker) == "5" else "5"
        elif reached and version_refused:
            verdict.faults.append(("protocol_refused", f"{broker.display} refuses MQTT {self._cfg.protocol}: "
                                                       f"{refused} (set mqtt.protocol: auto)"))
        return verdict
