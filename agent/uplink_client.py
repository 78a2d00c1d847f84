"""The uplink's paho client for one connection attempt, one step of its socket, and the MQTT version
each broker took, remembered across restarts.

Runs on the uplink thread only: agent/uplink.py builds a client here for each
attempt, drives it with :func:`step`, and keeps :class:`VersionMemory` up to
date. Nothing here is shared with another thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import select
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import statedir
from agent.config import MqttConfig
from agent.link_policy import SESSION_EXPIRY_S, Broker, tls_context

log = logging.getLogger(__name__)

MAX_INBOUND_BYTES = 64 * 1024  # announced in CONNECT (MQTT 5): the broker never sends us more
SLICE_S = 0.25  # longest wait in one select: the heartbeat's rhythm
MEMORY_DAYS = 7.0  # a broker's 3.1.1 is tried again with 5 after this long (it may have been upgraded)


def connect_args(protocol: str) -> dict[str, Any]:
    """MQTT 5: clean start off, the session kept for SESSION_EXPIRY_S, our largest inbound packet."""
    if protocol != "5":
        return {}
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    props.MaximumPacketSize = MAX_INBOUND_BYTES
    return {"clean_start": False, "properties": props}


def for_connection(status: bytes, connection: int) -> bytes:
    """A status message (the will, the last words) stamped with the connection it belongs to, and a
    message id of its own: a dispatcher orders statuses by (boot, connection), not by their time."""
    fields = json.loads(status)
    fields["connection"] = connection
    fields["msg_id"] = str(uuid.uuid4())
    return json.dumps(fields, separators=(",", ":")).encode()


class BoundedClient(mqtt.Client):
    """paho's client, refusing to read an incoming packet longer than ``MAX_INBOUND_BYTES``.

    MQTT 5 announces the limit in CONNECT and the broker drops what is longer;
    MQTT 3.1.1 cannot say it, and paho would hold the whole packet in memory
    (a 200 MB command, 200 MB of RAM). The packet's length is known from its
    fixed header: past the limit, not one byte of its body is read and the
    connection is dropped (``oversized`` says how long it was).
    """

    oversized: int | None = None

    def _sock_recv(self, bufsize: int) -> bytes:
        packet = self._in_packet
        if packet["have_remaining"] and packet["remaining_length"] > MAX_INBOUND_BYTES:
            self.oversized = int(packet["remaining_length"])
            raise OSError(errno.EMSGSIZE, f"an incoming packet of {self.oversized:,} bytes, over the "
                                          f"{MAX_INBOUND_BYTES:,}-byte limit")
        return super()._sock_recv(bufsize)


def make_client(cfg: MqttConfig, broker: Broker, protocol: str, *, client_id: str, will: tuple[str, bytes],
                callbacks: dict[str, Callable[..., None]]) -> mqtt.Client:
    """A client for one attempt: MQTT 5 or 3.1.1 with clean session off, the will, TLS and credentials;
    ``callbacks`` are paho's ``on_connect``, ``on_disconnect``... set as given."""
    v5 = protocol == "5"
    client = BoundedClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311, clean_session=None if v5 else False)
    client.max_inflight_messages_set(cfg.inflight_window + 20)  # alerts may pass a full window
    client.max_queued_messages_set(0)
    client.connect_timeout = cfg.connect_timeout_s
    if broker.tls:
        client.tls_set_context(tls_context(cfg))
    if cfg.username is not None:
        password = cfg.password.get_secret_value() if cfg.password else None
        client.username_pw_set(cfg.username, password)
    client.will_set(will[0], will[1], qos=1, retain=True)
    for name, callback in callbacks.items():
        setattr(client, name, callback)
    return client


def subscribe(client: mqtt.Client, topics: list[str], protocol: str) -> dict[int, str]:
    """QoS 1 subscriptions; returns SUBSCRIBE message id -> topic, for their SUBACKs."""
    pending = {}
    for topic in topics:
        if protocol == "5":  # keep the retain flag as published: retained commands are refused
            _, mid = client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        else:
            _, mid = client.subscribe(topic, qos=1)
        if mid is not None:
            pending[mid] = topic
    return pending


def suback_problems(topic: str, codes: list[Any]) -> list[str]:
    """What a SUBACK says is wrong: refused (an ACL; NATS refuses '.' in topics), or QoS 0 only."""
    problems = []
    for code in codes:
        if getattr(code, "is_failure", False):
            problems.append(f"{topic} refused ({code}, SUBACK 0x{getattr(code, 'value', 0x80):02x})")
        elif getattr(code, "value", 1) == 0:
            problems.append(f"{topic} granted at QoS 0 only: what is sent while offline is lost")
    return problems


def step(client: mqtt.Client, wake_fd: int) -> MQTTErrorCode:
    """One select over the broker's socket and the wake-up pipe, then paho's read/write/misc."""
    sock: Any = client.socket()
    if sock is None:
        return MQTTErrorCode.MQTT_ERR_NO_CONN
    pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already decrypted
    writers = [sock] if client.want_write() else []
    try:
        readable, _, _ = select.select([sock, wake_fd], writers, [], 0.0 if pending else SLICE_S)
    except (OSError, ValueError):
        return MQTTErrorCode.MQTT_ERR_CONN_LOST
    if pending or sock in readable:
        rc = client.loop_read()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
    if client.want_write():
        rc = client.loop_write()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return rc
    return client.loop_misc()


def tls_alert(text: str) -> str:
    """"failed to receive on socket: [SSL: X] tlsv13 alert certificate required (_ssl.c:2580)" -> the alert."""
    found = re.search(r"\] (.*?)(?: \(_ssl\.c:\d+\))?$", text)
    return found.group(1) if found else text


def no_delay(client: mqtt.Client) -> None:
    """Small packets (an alert, a PUBACK) go out at once, not after Nagle's wait for an ACK
    (paho leaves Nagle on: 40 ms behind a delayed ACK, measured here)."""
    sock: Any = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def close(client: mqtt.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


class VersionMemory:
    """The MQTT version each broker took (``protocol: auto``), in a small JSON file of the state directory.

    A unit that restarts (every ignition) does not knock on a 3.1.1 broker with MQTT 5 again: NATS logs
    an error for each such CONNECT, RabbitMQ 3.10 a crash report, and the first message waits one more
    round trip. An entry older than MEMORY_DAYS is not used (the broker may have been upgraded). Written
    only when something changed; a file that cannot be read or written costs a fallback, nothing more.
    Keys are the brokers' URLs without credentials.
    """

    def __init__(self, path: Path | None, *, wall: Callable[[], float] = time.time) -> None:
        self._path = path
        self._wall = wall
        self._entries: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[str, str]:
        """The versions remembered and still fresh, by broker."""
        if self._path is None:
            return {}
        try:
            fd = statedir.open_file(self._path, os.O_RDONLY)
            with os.fdopen(fd, "rb") as stream:
                data = json.loads(stream.read(65536))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s): MQTT versions will be found again", self._path, exc)
            return {}
        now = self._wall()
        fresh = {}
        for display, entry in (data.items() if isinstance(data, dict) else []):
            since = entry.get("since") if isinstance(entry, dict) else None
            if (isinstance(since, int | float) and entry.get("protocol") in ("5", "3.1.1")
                    and 0 <= now - since < MEMORY_DAYS * 86400):
                fresh[display] = entry["protocol"]
                self._entries[display] = {"protocol": entry["protocol"], "since": entry["since"]}
        return fresh

    def update(self, learned: dict[str, str]) -> None:
        """What the policy knows now, by broker; written if it differs from the file."""
        if self._path is None:
            return
        entries = {display: (self._entries[display] if self._entries.get(display, {}).get("protocol") == version
                             else {"protocol": version, "since": self._wall()})
                   for display, version in learned.items()}
        if entries == self._entries:
            return
        self._entries = entries
        temporary = self._path.with_name(self._path.name + ".tmp")
        try:
            fd = statedir.open_file(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            with os.fdopen(fd, "w") as stream:
                stream.write(json.dumps(entries, indent=1, sort_keys=True))
            os.replace(temporary, self._path)
        except OSError as exc:
            log.warning("cannot write %s (%s): MQTT versions will be found again after a restart", self._path, exc)
