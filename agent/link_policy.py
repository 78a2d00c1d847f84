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
- ``protocol: auto`` starts with MQTT 5 (or the version the broker took
  before: agent.uplink_client.VersionMemory). A broker that refuses the
  version in its CONNACK (NATS 2.9: "unacceptable protocol version") gets
  3.1.1 at once; one that closes the connection on the CONNECT without
  answering (RabbitMQ before 3.13) gets 5 again at once, then 3.1.1 if it
  does it again (a single close may be the link's doing, and a version
  learnt wrongly would be kept for days). No back-off and no failure counted
  for these: a refused version is not a failed link. A CONNACK that never
  comes (a timeout) also switches the version, after the usual wait. Once
  a version has worked it is kept for that broker.
  A broker that refuses the version that worked (an upgrade, a fail-over
  behind one name) is learnt again.
- A pinned version that the broker refuses, or CONNECTs closed without an
  answer twice running, is a ``protocol_refused`` fault; under ``auto``,
  CONNECTs closed unanswered with both versions are a ``broker_refused``
  fault. Each says what the broker did and what to change: never only
  "connection lost".
- A connection closed by the broker with MQTT 5's "session taken over", or
  closed within seconds of connecting three times running, is a
  ``session_taken_over`` fault: another client is using this vehicle's id,
  or (on 3.1.1, where brokers give no reason) the broker refuses something
  the vehicle sends. A refused CONNECT (not authorised...) is a
  ``broker_refused`` fault.
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
SESSION_EXPIRY_S = 24 * 3600  # MQTT 5: the broker keeps the vehicle's session (alert acks) through outages
UNANSWERED = 2  # CONNECTs closed without a CONNACK, running, before it is a fault (per version tried)


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
    fallback: str | None = None  # the version tried next at once, when this one was refused


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
        self._said_no: dict[str, set[str]] = {}  # broker url -> versions its CONNACK refused (auto)
        self._unanswered: dict[str, int] = {}  # broker url -> CONNECTs closed without a CONNACK, running
        self._now = False  # the next attempt without waiting (the other version after a refusal)
        self.connections = 0

    def remember(self, known: dict[str, str]) -> None:
        """Versions that worked before (``auto``), by broker URL without credentials: tried first."""
        if self._cfg.protocol == "auto":
            for broker in self.brokers:
                if known.get(broker.display) in ("5", "3.1.1"):
                    self._protocol[broker.url] = known[broker.display]

    def learned(self) -> dict[str, str]:
        """The version that works, by broker URL without credentials (``auto``)."""
        return {broker.display: self._protocol[broker.url] for broker in self.brokers if broker.url in self._protocol}

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
        if self._now:
            self._now = False
            return 0.0
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
                      refused: str | None, taken_over: bool, closed: bool = False,
                      publish_refused: bool = False) -> Verdict:
        """One attempt is over. ``refused``: the CONNACK's refusal (or the set-up's), if any; ``closed``:
        the broker closed the connection after our CONNECT without answering it (not our timeout)."""
        verdict = Verdict()
        protocol = self.protocol_for(broker)  # the version this attempt used
        self._now = False
        if was_up:
            self._unanswered.pop(broker.url, None)
            self._up_ended(verdict, lasted, taken_over, publish_refused)
            return verdict
        version_refused = refused is not None and any(  # CONNACK 0x84 (MQTT 5) or 1 (3.1.1), as paho names them
            words in refused.lower() for words in ("unsupported protocol version", "unacceptable protocol version"))
        unanswered = self._unanswered[broker.url] = self._unanswered.get(broker.url, 0) + 1 if (
            closed and refused is None) else 0
        if refused is not None and not version_refused:
            verdict.faults.append(("broker_refused", f"{broker.display}: {refused}"))
        if self._cfg.protocol == "auto":
            other_refusal = refused is not None and not version_refused  # not authorised...: not the version
            if reached and not other_refusal and self._next_version(verdict, broker, protocol, version_refused,
                                                                    closed, unanswered):
                return verdict  # the other version, at once: not a failure
        elif version_refused:
            verdict.faults.append(("protocol_refused", f"{broker.display} refuses MQTT {protocol}: "
                                                       f"{refused} (set mqtt.protocol: auto)"))
        elif unanswered >= UNANSWERED:
            verdict.faults.append(("protocol_refused", (
                f"{broker.display} closes the connection on each MQTT {protocol} CONNECT without answering "
                f"({unanswered} times running): it probably does not speak MQTT {protocol} (RabbitMQ before 3.13 "
                "does this to MQTT 5; set mqtt.protocol: auto), or it refuses this client (see the broker's log)")))
        self._failures += 1
        self._index += 1  # next broker after a failure to connect
        return verdict

    def _next_version(self, verdict: Verdict, broker: Broker, protocol: str, version_refused: bool, closed: bool,
                      unanswered: int) -> bool:
        """``protocol: auto`` after a failed attempt that reached the broker: which version next, and is
        it a fault. True when the other version is to be tried at once."""
        url = broker.url
        said_no = self._said_no.setdefault(url, set())
        if (version_refused or unanswered >= UNANSWERED) and self._protocol.pop(url, None) is not None:
            said_no.clear()  # what worked no longer does (an upgrade, a fail-over behind one name): learn again
        if url in self._protocol:
            return False  # a version that works: this failure says nothing about versions
        if not version_refused and not closed:
            return False  # no CONNACK in time (a weak cell at boot, a half-open link): says nothing about versions
        if version_refused:
            said_no.add(protocol)
        if said_no >= {"5", "3.1.1"}:
            said_no.clear()
            verdict.faults.append(("broker_refused", f"{broker.display} refuses both MQTT 5 and 3.1.1"))
        if protocol == "5" and closed and unanswered == 1:
            self._now = True  # hung up once: maybe the link, not the version; MQTT 5 again, at once
            return True
        other = "3.1.1" if protocol == "5" else "5"
        self._try[url] = protocol if other in said_no else other
        if self._try[url] == "3.1.1" != protocol and (version_refused or closed):
            verdict.fallback = "3.1.1"  # the broker refused (or hung up twice on) MQTT 5: no back-off
            self._now = True
            return True
        left = {"5", "3.1.1"} - said_no
        if unanswered >= UNANSWERED * len(left):
            tried = f"MQTT {protocol}" if len(left) == 1 else "MQTT 5 and 3.1.1 alike"
            refusing = " (it refuses MQTT 5)" if "5" in said_no else ""
            verdict.faults.append(("broker_refused", (
                f"{broker.display} closes the connection on each CONNECT without answering, with {tried}"
                f"{refusing}, {unanswered} times running: it refuses this client (client id, certificate, a topic "
                "of its last will: NATS refuses '.' in topics; limits?) or is not an MQTT broker; see its log")))
        return False

    def _up_ended(self, verdict: Verdict, lasted: float, taken_over: bool, publish_refused: bool) -> None:
        verdict.cleared += ["broker_refused", "protocol_refused"]
        if lasted >= self._cfg.stable_after_s:
            self._failures = 0
            self._kicks = 0
            verdict.cleared.append("session_taken_over")
        else:
            self._failures += 1
        # a connection lost right after the broker refused a publish (paho hangs up on a failed PUBACK) is
        # that refusal (a publish_refused fault), not a takeover
        self._kicks = self._kicks + 1 if lasted < KICK_WITHIN_S and not publish_refused else 0
        if taken_over or self._kicks >= KICKS:
            why = ("the broker handed this vehicle's session to another client" if taken_over else
                   f"the broker closed the connection within {KICK_WITHIN_S:g} s of connecting "
                   f"{self._kicks} times running")
            verdict.faults.append(("session_taken_over", f"{why}: another client may be using the client id "
                                                         "of this vehicle (check the broker's client-id binding), "
                                                         "or the broker refuses what the vehicle subscribes to or "
                                                         "publishes (its ACL; NATS refuses '.' in topics)"))
