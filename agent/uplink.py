"""The uplink: the only owner of the paho-mqtt client and of the connection to dispatch.

Runs one supervised thread ("uplink"). Nothing else touches paho: other
threads hand work over with :meth:`Uplink.submit`, :meth:`Uplink.publish`,
:meth:`Uplink.hurry` and :meth:`Uplink.request_stop`, which append to an
inbox and write one byte to a wake-up pipe that the thread ``select``s on
beside the broker's socket (no polling sleeps). What paho reports comes back
to the core as typed events: :class:`~agent.events.LinkUp`,
:class:`~agent.events.LinkDown`, :class:`~agent.events.Acked` (batched),
:class:`~agent.events.Received` and faults.

Bookkeeping: every publish, tracked (an outbox row waits for it) or not (the
retained status, the last words), is recorded under the message id paho gave
it on this connection, and forgotten when its PUBACK is consumed. A row is
acknowledged only by the PUBACK of its own message id: paho's 16-bit ids
wrap after 65,535 publishes and an untracked publish's ack can never be
taken for a row's.

Connection policy (see :mod:`agent.link_policy`): brokers tried in turn with
full-jitter exponential backoff, a short fixed retry interval while an alert
waits; ``mqtt.protocol: auto`` falls back to MQTT 3.1.1 at once for a broker
that refuses 5 in its CONNACK or closes the connection on the CONNECT without
one (told apart from a CONNACK that never comes), and the version each broker
took is remembered across restarts; a failed set-up (unreadable or mismatched
key, missing file) is a failed attempt with a ``link_setup_failed`` fault, retried, and cleared once
the files are right again; a session taken over by another client is a
``session_taken_over`` fault. No CONNACK within ``connect_timeout_s`` and no
PUBACK within ``ack_timeout_s`` (half-open link) force a reconnect;
keepalive catches a half-open link with nothing in flight.
"""

from __future__ import annotations

import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from agent import uplink_client as wire
from agent.config import MqttConfig
from agent.events import Acked, FaultCleared, FaultRaised, LinkDown, LinkUp, Post, Received
from agent.link_policy import Broker, LinkPolicy, describe
from agent.supervisor import Worker
from agent.uplink_channel import Channel, Hurry, Publish, Stop, Submit

log = logging.getLogger(__name__)

LAST_WORDS_WAIT_S = 2.0
ACK_BATCH = 64  # backlog PUBACKs handed to the core together (an alert's at once)
TAKEN_OVER = 142  # MQTT 5 DISCONNECT reason: session taken over
STABLE_S = 60.0  # a connection up this long without an oversized packet clears inbound_too_large


class Uplink:
    def __init__(
        self,
        cfg: MqttConfig,
        *,
        client_id: str,
        subscriptions: list[str],
        will: tuple[str, bytes],
        post: Post,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        versions: Path | None = None,
    ) -> None:
        """``versions``: where the MQTT version each broker took is remembered (agent.uplink_client)."""
        self._cfg = cfg
        self._client_id = client_id
        self._subscriptions = subscriptions
        self._will = will
        self._post = post
        self._clock = clock
        self._policy = LinkPolicy(cfg, rng or random.Random(), clock)
        self._versions = wire.VersionMemory(versions)
        self._policy.remember(self._versions.load())
        self._channel = Channel()
        self._stopping = False
        # uplink thread only, from here on
        self._generation = 0
        self._was_oversized = False
        self._connected = False
        self._inflight: dict[int, tuple[int | None, float]] = {}  # mid -> (token or None, published at)
        self._queue: deque[tuple[int, str, bytes]] = deque()  # tracked, waiting for room in the window
        self._acks: list[tuple[int, str | None]] = []
        self._urgent_tokens: set[int] = set()  # alerts' rows in flight: their PUBACK goes to the core at once
        self._urgent_acked = False
        self._refused: str | None = None  # why the broker refused or dropped this connection
        self._disconnect_rc: int | None = None
        self._connacked = False  # this connection's CONNACK accepted it
        self._subscribing: dict[int, str] = {}  # SUBSCRIBE mid -> topic, until its SUBACK
        self._sub_problems: list[str] = []  # this connection's refused or downgraded subscriptions
        self._faults: set[str] = set()
        self._publish_refused = False  # the broker refused a publish on this connection (a PUBACK reason code)
        self.unexpected_acks = 0

    # --- other threads' side: hand work over, never touch paho ----------------------

    def submit(self, generation: int, items: Sequence[tuple[int, str, bytes]], *, urgent: bool = False) -> None:
        """Tracked messages (token = outbox row id) for connection ``generation``; PUBACKs come
        back as :class:`Acked` by token. Dropped if that connection is gone (its LinkDown says so)."""
        self._channel.hand(Submit(generation, tuple(items), urgent))

    def publish(self, generation: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """One untracked message (the retained status) on connection ``generation``."""
        self._channel.hand(Publish(generation, topic, payload, retain))

    def hurry(self, urgent: bool) -> None:
        """An alert is waiting (True) or not any more (False): changes the reconnect rhythm."""
        self._channel.hand(Hurry(urgent))

    def request_stop(self, last_words: tuple[str, bytes] | None = None) -> None:
        """Publish ``last_words`` (the offline status) if connected, disconnect, end the thread."""
        self._channel.hand(Stop(last_words))

    def close(self) -> None:
        self._channel.close()

    # --- the thread ---------------------------------------------------------------

    def run(self, worker: Worker) -> None:
        """The supervised thread's body; restartable after any exception."""
        while not self._stopping:
            worker.beat()
            broker, protocol = self._policy.next_attempt()
            try:
                lasted = self._session(worker, broker, protocol)
            except Exception:  # the supervisor restarts this thread; the core must not wait for this link
                self._connected = False
                self._post(LinkDown(self._generation, "the uplink thread failed"))
                raise
            if self._stopping:
                return
            self._wait(worker, self._policy.delay(lasted))

    def _wait(self, worker: Worker, delay: float) -> None:
        """Between attempts: sleep on the wake-up pipe, beating; an alert cuts it short."""
        deadline = self._clock() + delay
        while not self._stopping:
            left = deadline - self._clock()
            if left <= 0:
                return
            worker.beat()
            self._channel.sleep(min(left, wire.SLICE_S))
            for work in self._channel.take():
                if isinstance(work, Stop):
                    self._stopping = True
                elif isinstance(work, Hurry) and self._policy.set_urgent(work.urgent):
                    return  # try now
                # submits and publishes for a connection that is gone: its LinkDown released them

    def _session(self, worker: Worker, broker: Broker, protocol: str) -> float:
        """One connection, from attempt to loss; returns how long it was up."""
        self._generation += 1
        generation = self._generation
        self._refused = self._disconnect_rc = None
        self._connacked = False
        self._publish_refused = False
        try:
            will = (self._will[0], wire.for_connection(self._will[1], generation))
            client = wire.make_client(self._cfg, broker, protocol, client_id=self._client_id, will=will,
                                      callbacks=self._callbacks(broker, protocol, generation))
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._fault("link_setup_failed", f"cannot set up the connection to {broker.display}: {describe(exc)}")
            self._policy.attempt_ended(broker, reached=False, was_up=False, lasted=0.0, refused=None,
                                       taken_over=False)
            log.warning("link to %s: set-up failed: %s", broker.display, describe(exc))
            self._post(LinkDown(generation, f"set-up failed: {describe(exc)}"))
            return 0.0
        self._clear("link_setup_failed")
        try:
            client.connect(broker.host, broker.port, keepalive=self._cfg.keepalive_s,
                           **wire.connect_args(protocol))
        except (OSError, ssl.SSLError, ValueError) as exc:
            if isinstance(exc, ssl.SSLError):  # the broker's certificate, or our CA file after a rotation
                self._fault("tls_failed", f"TLS with {broker.display} failed: {describe(exc)} (is mqtt.tls.ca_file "
                                          "the CA that signed the broker's certificate, and the host name in it?)")
            self._lost(broker, generation, describe(exc), reached=False)
            return 0.0
        wire.no_delay(client)
        started, up_since = self._clock(), None
        reason = "stopped"
        closed = False
        try:
            while True:
                worker.beat()
                rc = wire.step(client, self._channel.wake_fd)
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    if isinstance(client, wire.BoundedClient) and client.oversized is not None:
                        self._oversized(broker, client.oversized)
                    closed = not self._connacked and self._refused is None
                    reason = (f"the broker closed the connection without answering CONNECT (MQTT {protocol})"
                              if closed else self._refused or mqtt.error_string(rc))
                    break
                if self._connected and up_since is None:
                    up_since = self._clock()
                if up_since is not None and self._clock() - up_since > STABLE_S and self._was_oversized:
                    self._was_oversized = False
                    self._clear("inbound_too_large")
                if self._serve_inbox(client, generation):
                    self._say_last_words(worker, client)
                    return 0.0
                self._feed(client)
                self._flush_acks(generation)
                reason = self._overdue(started)
                if reason:
                    break
        finally:
            self._connected = False
            self._inflight.clear()
            self._queue.clear()
            self._acks.clear()
            self._urgent_tokens.clear()
            self._urgent_acked = False
            wire.close(client)
        lasted = 0.0 if up_since is None else self._clock() - up_since
        self._lost(broker, generation, reason, reached=True, lasted=lasted, was_up=up_since is not None,
                   closed=closed)
        return lasted

    def _oversized(self, broker: Broker, size: int) -> None:
        self._was_oversized = True
        self._fault("inbound_too_large", f"{broker.display} sent a packet of {size:,} bytes (over "
                                         f"{wire.MAX_INBOUND_BYTES:,}): connection dropped before reading it; set "
                                         "the broker's max_packet_size, or use MQTT 5")

    def _overdue(self, started: float) -> str:
        now = self._clock()
        if not self._connected and now - started > self._cfg.connect_timeout_s:
            return f"no CONNACK within {self._cfg.connect_timeout_s:g} s"
        if self._inflight:
            oldest = now - min(at for _, at in self._inflight.values())
            if oldest > self._cfg.ack_timeout_s:
                return f"no PUBACK for {oldest:.0f} s (half-open link?)"
        return ""

    def _lost(self, broker: Broker, generation: int, reason: str, *, reached: bool, lasted: float = 0.0,
              was_up: bool = False, closed: bool = False) -> None:
        verdict = self._policy.attempt_ended(broker, reached=reached, was_up=was_up, lasted=lasted,
                                             refused=self._refused, taken_over=self._disconnect_rc == TAKEN_OVER,
                                             closed=closed, publish_refused=self._publish_refused)
        for code, detail in verdict.faults:
            self._fault(code, detail)
        for code in verdict.cleared:
            self._clear(code)
        if verdict.fallback:  # not a failure: the broker does not speak this version
            reason = f"{reason}; trying MQTT {verdict.fallback}"
            log.info("link to %s: %s", broker.display, reason)
        else:
            log.warning("link to %s %s: %s", broker.display, "lost" if was_up else "failed", reason)
        self._post(LinkDown(generation, reason))

    def _serve_inbox(self, client: mqtt.Client, generation: int) -> bool:
        """Take handed-over work; True when asked to stop."""
        stop = False
        for work in self._channel.take():
            match work:
                case Submit(generation=g, items=items, urgent=urgent) if g == generation and self._connected:
                    if urgent:
                        for token, topic, payload in items:
                            self._urgent_tokens.add(token)
                            self._publish(client, token, topic, payload, retain=False)
                    else:
                        self._queue.extend(items)
                case Publish(generation=g, topic=topic, payload=payload, retain=retain) if g == generation:
                    self._publish(client, None, topic, payload, retain=retain)
                case Hurry(urgent=urgent):
                    self._policy.set_urgent(urgent)
                case Stop(last_words=words):
                    self._stopping = True
                    if words is not None and self._connected:
                        self._publish(client, None, words[0], wire.for_connection(words[1], generation), retain=True)
                    stop = True
                case _:
                    pass  # for a connection that is gone: its LinkDown released the rows
        return stop

    def _publish(self, client: mqtt.Client, token: int | None, topic: str, payload: bytes, *, retain: bool) -> None:
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._inflight[info.mid] = (token, self._clock())
        # else: the connection is going; the core releases its rows on LinkDown

    def _feed(self, client: mqtt.Client) -> None:
        """Top the in-flight window up from the hand-over queue."""
        window = self._cfg.inflight_window
        while self._queue and self._connected and len(self._inflight) < window:
            token, topic, payload = self._queue.popleft()
            self._publish(client, token, topic, payload, retain=False)

    def _flush_acks(self, generation: int) -> None:
        """PUBACKs to the core: an alert's at once; the backlog's by the batch, or when the core must
        refill the window (every event the core takes is a GIL hand-over and a turn of its loop)."""
        if not self._acks:
            return
        if (self._urgent_acked or len(self._acks) >= ACK_BATCH or len(self._queue) < self._cfg.inflight_window
                or not self._inflight):
            acks, self._acks = tuple(self._acks), []
            self._urgent_acked = False
            self._post(Acked(generation, acks))

    def _say_last_words(self, worker: Worker, client: mqtt.Client) -> None:
        """Wait briefly for the last words' PUBACK, then a clean DISCONNECT (no will)."""
        deadline = self._clock() + LAST_WORDS_WAIT_S
        while self._connected and any(t is None for t, _ in self._inflight.values()) and self._clock() < deadline:
            worker.beat()
            if wire.step(client, self._channel.wake_fd) != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_write()
        self._connected = False
        wire.close(client)

    # --- paho callbacks: run on this thread, inside loop_read ---------------------------

    def _callbacks(self, broker: Broker, protocol: str, generation: int) -> dict[str, Callable[..., None]]:
        return {"on_connect": lambda c, u, f, rc, p: self._on_connect(c, broker, protocol, generation, rc),
                "on_disconnect": lambda c, u, f, rc, p: self._on_disconnect(rc),
                "on_publish": lambda c, u, mid, rc, p: self._on_publish(mid, rc),
                "on_message": lambda c, u, msg: self._on_message(generation, msg),
                "on_subscribe": lambda c, u, mid, codes, p: self._on_subscribe(broker, mid, codes),
                "on_log": lambda c, u, level, text: self._on_log(level, text)}

    def _on_connect(self, client: mqtt.Client, broker: Broker, protocol: str, generation: int, rc: Any) -> None:
        if rc.is_failure:
            self._refused = f"broker refused the connection: {rc}"
            return
        self._connacked = True
        self._clear("tls_failed")
        self._subscribing = wire.subscribe(client, self._subscriptions, protocol)
        self._sub_problems = []
        self._connected = True
        reconnects = self._policy.connected(broker, protocol)
        self._versions.update(self._policy.learned())
        log.info("link up to %s (MQTT %s)", broker.display, protocol)
        self._post(LinkUp(generation, broker.display, protocol, reconnects))

    def _on_log(self, level: int, text: str) -> None:
        """TLS 1.3: a client certificate the broker refuses is an alert read after the handshake, which
        paho only logs; without it the broker would seem to hang up on the CONNECT."""
        if level == mqtt.MQTT_LOG_ERR and not self._connacked and "[SSL" in text:
            self._refused = f"the broker refused the TLS session: {wire.tls_alert(text)}"

    def _on_disconnect(self, rc: Any) -> None:
        self._connected = False
        value = getattr(rc, "value", None)
        log.debug("disconnected: %r", rc)
        if self._disconnect_rc is None or self._disconnect_rc < 128:  # keep the broker's own reason
            self._disconnect_rc = value if isinstance(value, int) else None
        if self._disconnect_rc == TAKEN_OVER:
            self._refused = "the broker handed this vehicle's session to another client"

    def _on_subscribe(self, broker: Broker, mid: int, codes: list[Any]) -> None:
        """A SUBACK: a refused subscription (NATS refuses '.' in topics; an ACL) means dispatch's commands
        and acknowledgements never reach the vehicle; QoS 0 means those sent while it is offline are lost."""
        topic = self._subscribing.pop(mid, None)
        if topic is None:
            return
        self._sub_problems += wire.suback_problems(topic, codes)
        if self._subscribing:
            return
        if self._sub_problems:
            self._fault("subscription_refused", f"{broker.display}: " + "; ".join(self._sub_problems)
                        + ": dispatch's commands and acknowledgements may not reach this vehicle")
        else:
            self._clear("subscription_refused")

    def _on_publish(self, mid: int, rc: Any) -> None:
        sent = self._inflight.pop(mid, None)
        if sent is None:
            self.unexpected_acks += 1  # not ours on this connection: never taken for a row's
            return
        token = sent[0]
        failed = bool(getattr(rc, "is_failure", False))
        self._publish_refused = self._publish_refused or failed
        if token is not None:
            self._acks.append((token, str(rc) if failed else None))
            if token in self._urgent_tokens:
                self._urgent_tokens.discard(token)
                self._urgent_acked = True

    def _on_message(self, generation: int, msg: mqtt.MQTTMessage) -> None:
        self._post(Received(generation, msg.topic, bytes(msg.payload), bool(msg.retain)))

    # --- faults --------------------------------------------------------------------------

    def _fault(self, code: str, detail: str) -> None:
        if code not in self._faults:
            log.error("%s: %s", code, detail)
        self._faults.add(code)
        self._post(FaultRaised(code, detail))

    def _clear(self, code: str) -> None:
        if code in self._faults:
            self._faults.discard(code)
            self._post(FaultCleared(code))

