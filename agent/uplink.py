"""The uplink: owns the paho-mqtt client and the connection to dispatch.

Runs one thread of its own ("uplink") that connects, runs paho's network
loop and reconnects; no paho object leaks out. The core thread calls
:meth:`Uplink.publish`; everything paho reports (connected, lost, PUBACK,
incoming message) becomes a :class:`LinkEvent` on the core's queue, and the
callbacks return at once.

Connection policy:
- brokers are tried in turn; the delay before each attempt is exponential
  backoff with full jitter (``uniform(0, min(max, initial * 2**n))``), reset
  once a connection has lasted ``stable_after_s``;
- a new paho client per connection: paho's in-RAM queue never outlives its
  connection (durability is the outbox's job) and is never replayed in a
  burst after a reconnect;
- no CONNACK within ``connect_timeout_s`` (TLS refused, broker hung) and no
  PUBACK within ``ack_timeout_s`` (half-open link) both force a reconnect;
  keepalive catches a half-open link with nothing in flight;
- the retained ``status`` topic says online on connect and offline on a
  clean stop; the last will says offline when the link dies.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.config import MqttConfig

log = logging.getLogger(__name__)

SESSION_EXPIRY_S = 24 * 3600  # the broker keeps our subscriptions (alert acks) through outages


@dataclass(frozen=True, slots=True)
class LinkEvent:
    kind: Literal["up", "down", "acks", "message"]
    generation: int  # which connection it belongs to
    mid: int = 0
    topic: str = ""
    payload: bytes = b""
    retain: bool = False
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Broker:
    url: str
    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Broker:
        parts = urlsplit(url)
        tls = parts.scheme == "mqtts"
        return cls(url, parts.hostname or "", parts.port or (8883 if tls else 1883), tls)


def tls_context(cfg: MqttConfig) -> ssl.SSLContext:
    """TLS 1.2+ (or 1.3), the broker's certificate verified against the CA, hostname checked."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.tls.ca_file) if cfg.tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if cfg.tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    if cfg.tls.cert_file is not None:
        ctx.load_cert_chain(str(cfg.tls.cert_file), str(cfg.tls.key_file) if cfg.tls.key_file else None)
    return ctx


class Uplink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will: Callable[[], tuple[str, bytes]],
        events: queue.Queue[Any],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._events = events
        self._rng = rng or random.Random()
        self._clock = clock
        self._brokers = [Broker.parse(url) for url in cfg.brokers]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None
        self._sent: dict[int, tuple[int, float]] = {}  # mid -> (token, when published)
        self._early: set[int] = set()  # mids acknowledged before publish() returned them
        self._queue: deque[tuple[int, str, bytes]] = deque()  # submitted, not yet handed to paho
        self._acks: list[tuple[int, str | None]] = []  # (token, refusal) since take_acks()
        self._ack_posted = False
        self._urgent: set[int] = set()
        self.generation = 0
        self.connected = False
        self.connected_since: float | None = None  # monotonic
        self.broker: str | None = None
        self.reconnects = 0
        self.last_error: str | None = None
        self.attempts = 0

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, last_words: tuple[str, bytes] | None = None, timeout: float = 3.0) -> None:
        """Publish ``last_words`` (the offline status) if connected, then disconnect."""
        with self._lock:
            client = self._client if self.connected else None
        if client is not None and last_words is not None:
            info = client.publish(last_words[0], last_words[1], qos=1, retain=True)
            info.wait_for_publish(timeout) if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None
        self._stop.set()
        if client is not None:
            client.disconnect()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- publishing ------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        """Publish one untracked message now (the retained status); False when not connected."""
        with self._lock:
            client = self._client if self.connected else None
        if client is None:
            return False
        return client.publish(topic, payload, qos=1, retain=retain).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def submit(self, items: list[tuple[int, str, bytes]], *, urgent: bool = False) -> bool:
        """Hand tracked messages (token = outbox row id) to the link; their PUBACKs come back by token.

        Urgent ones (alerts), and as many as the in-flight window has room for, are
        published at once from the calling thread; the rest wait in a short queue
        that the uplink thread feeds to paho as PUBACKs free the window (no
        thread hand-over per message). False when not connected.
        """
        with self._lock:
            client = self._client if self.connected else None
            if client is None:
                return False
            if urgent:
                self._urgent.update(token for token, _, _ in items)
                now = items
            else:
                room = 0 if self._queue else max(0, self._cfg.inflight_window - len(self._sent))
                now = items[:room]
                self._queue.extend(items[room:])
        for token, topic, payload in now:
            self._publish(client, token, topic, payload)
        return True

    def _publish(self, client: mqtt.Client, token: int, topic: str, payload: bytes) -> None:
        info = client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return  # the connection is going: the core releases everything on "down"
        with self._lock:
            if info.mid in self._early:  # PUBACK came before publish() returned
                self._early.discard(info.mid)
                self._ack_token(token, None)
            else:
                self._sent[info.mid] = (token, self._clock())

    def _feed(self, client: mqtt.Client) -> None:
        """Uplink thread: top the in-flight window up from the queue."""
        while True:
            with self._lock:
                if not self._queue or len(self._sent) >= self._cfg.inflight_window:
                    return
                token, topic, payload = self._queue.popleft()
            self._publish(client, token, topic, payload)

    def _ack_token(self, token: int, refused: str | None) -> None:
        """With the lock held. The core is woken for an urgent message's PUBACK, when the
        queue runs low, or once enough have gathered: not once per message."""
        self._acks.append((token, refused))
        if not self._ack_posted and (token in self._urgent or len(self._acks) >= 32
                                     or len(self._queue) < 100):
            self._post_acks()

    def _post_acks(self) -> None:
        self._ack_posted = True
        self._events.put(LinkEvent("acks", self.generation))

    def take_acks(self) -> list[tuple[int, str | None]]:
        """(token, refusal) for each PUBACK since the last call (core thread)."""
        with self._lock:
            acks, self._acks = self._acks, []
            self._ack_posted = False
            self._urgent.difference_update(token for token, _ in acks)
        return acks

    def in_flight(self) -> int:
        with self._lock:
            return len(self._sent) + len(self._queue)

    # --- the thread ----------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        index = 0
        while not self._stop.is_set():
            broker = self._brokers[index % len(self._brokers)]
            lasted = self._session(broker)
            if self._stop.is_set():
                break
            if lasted >= self._cfg.stable_after_s:
                failures = 0
            else:
                failures += 1
                index += 1  # next broker after a failure; stay on a good one
            ceiling = min(self._cfg.backoff_max_s, self._cfg.backoff_initial_s * 2 ** min(failures, 16))
            delay = self._rng.uniform(0, ceiling) if failures else self._rng.uniform(0, self._cfg.backoff_initial_s)
            self._stop.wait(delay)

    def _session(self, broker: Broker) -> float:
        """One connection, from attempt to loss; returns how long it was up."""
        self.attempts += 1
        self.generation += 1
        generation = self.generation
        client = self._make_client(broker, generation)
        try:
            client.connect(broker.host, broker.port, keepalive=self._cfg.keepalive_s, **self._connect_args())
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._failed(broker, _describe(exc))
            return 0.0
        _no_delay(client)
        with self._lock:
            self._client = client
        started = self._clock()
        reason = "stopped"
        try:
            while not self._stop.is_set():
                rc = client.loop(timeout=0.05)
                if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self.connected:
                    self._feed(client)
                    with self._lock:
                        if self._acks and not self._ack_posted and not self._sent:
                            self._post_acks()  # all quiet: hand over what has gathered
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    reason = self.last_error if self.last_error and not self.connected else mqtt.error_string(rc)
                    break
                now = self._clock()
                if not self.connected and now - started > self._cfg.connect_timeout_s:
                    reason = f"no CONNACK within {self._cfg.connect_timeout_s:g} s"
                    break
                overdue = self._oldest_unacked(now)
                if overdue is not None and overdue > self._cfg.ack_timeout_s:
                    reason = f"no PUBACK for {overdue:.0f} s (half-open link?)"
                    break
        finally:
            was_up = self.connected_since
            with self._lock:
                self._client = None
                self.connected = False
                self.connected_since = None
                self._sent.clear()
                self._early.clear()
                self._queue.clear()
                self._acks.clear()
                self._urgent.clear()
                self._ack_posted = False
            if not self._stop.is_set():
                _close(client)
        if self._stop.is_set():
            return 0.0
        self.last_error = reason
        log.warning("link to %s lost: %s", broker.url, reason)
        self._events.put(LinkEvent("down", generation, detail=reason))
        return 0.0 if was_up is None else self._clock() - was_up

    def _failed(self, broker: Broker, reason: str) -> None:
        self.last_error = reason
        log.warning("cannot connect to %s: %s", broker.url, reason)

    def _oldest_unacked(self, now: float) -> float | None:
        with self._lock:
            if not self._sent:
                return None
            return now - min(at for _, at in self._sent.values())

    def _connect_args(self) -> dict[str, Any]:
        if self._cfg.protocol != "5":
            return {}
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        return {"clean_start": False, "properties": props}

    def _make_client(self, broker: Broker, generation: int) -> mqtt.Client:
        v5 = self._cfg.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            clean_session=None if v5 else False,
        )
        client.max_inflight_messages_set(self._cfg.inflight_window + 10)  # alerts may pass a full window
        client.max_queued_messages_set(0)
        client.connect_timeout = self._cfg.connect_timeout_s
        if broker.tls:
            client.tls_set_context(tls_context(self._cfg))
        if self._cfg.username is not None:
            password = self._cfg.password.get_secret_value() if self._cfg.password else None
            client.username_pw_set(self._cfg.username, password)
        topic, payload = self._will()
        client.will_set(topic, payload, qos=1, retain=True)
        client.on_connect = lambda c, u, f, rc, p: self._on_connect(c, broker, generation, rc)
        client.on_disconnect = lambda c, u, f, rc, p: self._on_disconnect(generation, rc)
        client.on_publish = lambda c, u, mid, rc, p: self._on_publish(generation, mid, rc)
        client.on_message = lambda c, u, msg: self._on_message(generation, msg)
        return client

    # --- paho callbacks (network thread: never block) ---------------------------

    def _on_connect(self, client: mqtt.Client, broker: Broker, generation: int, rc: Any) -> None:
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.warning("%s refused the connection: %s", broker.url, rc)
            return
        for topic in self._subscriptions:
            if self._cfg.protocol == "5":  # keep the retain flag as published: retained commands are refused
                client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
            else:
                client.subscribe(topic, qos=1)
        with self._lock:
            self.connected = True
            self.connected_since = self._clock()
            self.broker = broker.url
        if self.attempts > 1:
            self.reconnects += 1
        log.info("link up to %s", broker.url)
        self._events.put(LinkEvent("up", generation, detail=broker.url))

    def _on_disconnect(self, generation: int, rc: Any) -> None:
        with self._lock:
            self.connected = False

    def _on_publish(self, generation: int, mid: int, rc: Any) -> None:
        refused = str(rc) if getattr(rc, "is_failure", False) else None
        with self._lock:
            if generation != self.generation:
                return
            sent = self._sent.pop(mid, None)
            if sent is None:
                self._early.add(mid)
            else:
                self._ack_token(sent[0], refused)

    def _on_message(self, generation: int, msg: mqtt.MQTTMessage) -> None:
        self._events.put(LinkEvent("message", generation, topic=msg.topic, payload=bytes(msg.payload),
                                   retain=bool(msg.retain)))


def _no_delay(client: mqtt.Client) -> None:
    """Small packets (an alert, a PUBACK) go out at once, not after Nagle's wait for an ACK
    (paho leaves Nagle on: 40 ms behind a delayed ACK, measured here)."""
    sock: Any = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS handshake failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    return str(exc) or type(exc).__name__
