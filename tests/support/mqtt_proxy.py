"""An MQTT-aware TCP proxy: a congested link that takes a few bytes at a time, and a PUBACK that never comes.

Sits between the agent and a real broker. From the agent it reads at most
``chunk`` bytes per ``recv`` through a small receive buffer, so the agent's
socket fills up and its sends are partial, as on a congested cellular
uplink. It parses both directions into MQTT packets (fixed header and
remaining length; PUBLISH topic and packet id; PUBACK packet id) and counts
them, and it can drop chosen PUBACKs on their way back to the agent.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

PUBLISH, PUBACK = 3, 4


@dataclass
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def qos(self) -> int:
        return (self.flags >> 1) & 3


def publish_fields(packet: Packet) -> tuple[str, int | None]:
    """A PUBLISH's topic and packet id (None at QoS 0)."""
    length = int.from_bytes(packet.body[0:2], "big")
    topic = packet.body[2:2 + length].decode("utf-8", "replace")
    mid = int.from_bytes(packet.body[2 + length:4 + length], "big") if packet.qos else None
    return topic, mid


def puback_id(packet: Packet) -> int:
    return int.from_bytes(packet.body[0:2], "big")


class Framer:
    """Bytes in, whole MQTT packets out (with the raw bytes of each)."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[tuple[Packet, bytes]]:
        self._buffer += data
        out: list[tuple[Packet, bytes]] = []
        while True:
            parsed = self._one()
            if parsed is None:
                return out
            out.append(parsed)

    def _one(self) -> tuple[Packet, bytes] | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        length, multiplier, index = 0, 1, 1
        while True:
            if index >= len(buf):
                return None
            byte = buf[index]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            index += 1
            if not byte & 0x80:
                break
            if index > 4:
                raise ValueError("malformed remaining length")
        end = index + length
        if len(buf) < end:
            return None
        raw, self._buffer = buf[:end], buf[end:]
        return Packet(buf[0] >> 4, buf[0] & 0x0F, raw[index:]), raw


@dataclass
class Counts:
    publishes: list[tuple[str, int | None]] = field(default_factory=list)  # agent -> broker, in order
    pubacks_forwarded: list[int] = field(default_factory=list)
    pubacks_dropped: list[int] = field(default_factory=list)


class MqttProxy:
    def __init__(self, upstream_port: int, *, chunk: int = 65536, rcvbuf: int | None = None,
                 pause: float = 0.0, drop_puback: Callable[[int, Counts], bool] | None = None) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.chunk = chunk
        self.pause = pause  # seconds between reads from the agent: a slow link
        self.rcvbuf = rcvbuf
        self.drop_puback = drop_puback
        self.counts = Counts()
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:  # inherited by accepted sockets
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                agent, _ = self._listener.accept()
            except OSError:
                return
            broker = socket.create_connection(self.upstream, timeout=5)
            broker.settimeout(None)
            self._socks += [agent, broker]
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(agent, broker), daemon=True).start()

    def _pump(self, agent: socket.socket, broker: socket.socket) -> None:
        up, down = Framer(), Framer()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([agent, broker], [], [], 0.2)
                if agent in ready:
                    data = agent.recv(self.chunk)  # a few bytes at a time: the agent's sends back up
                    if not data:
                        return
                    if self.pause:
                        time.sleep(self.pause)
                    for packet, _ in up.feed(data):
                        if packet.kind == PUBLISH:
                            with self._lock:
                                self.counts.publishes.append(publish_fields(packet))
                    broker.sendall(data)
                if broker in ready:
                    data = broker.recv(65536)
                    if not data:
                        return
                    out = b""
                    for packet, raw in down.feed(data):
                        if packet.kind == PUBACK:
                            mid = puback_id(packet)
                            with self._lock:
                                if self.drop_puback is not None and self.drop_puback(mid, self.counts):
                                    self.counts.pubacks_dropped.append(mid)
                                    continue
                                self.counts.pubacks_forwarded.append(mid)
                        out += raw
                    if out:
                        agent.sendall(out)
        except (OSError, ValueError):
            return
        finally:
            for sock in (agent, broker):
                with contextlib.suppress(OSError):
                    sock.close()
