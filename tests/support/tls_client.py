"""A TLS MQTT 3.1.1 client with a certificate, for the security tests: records what it receives
and how often its connection was closed."""

from __future__ import annotations

import contextlib
import ssl
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Client:
    """Connects as ``name`` (``pki/<name>.crt``), with client id ``client_id`` (default ``test-<name>``)."""

    def __init__(self, port: int, pki: Path, name: str, *, ca: str = "ca", client_id: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.connected = threading.Event()
        self.connects = 0
        self.disconnects = 0
        self.refused: str | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{name}",
                                  protocol=mqtt.MQTTv311)
        ctx = ssl.create_default_context(cafile=str(pki / f"{ca}.crt"))
        ctx.load_cert_chain(str(pki / f"{name}.crt"), str(pki / f"{name}.key"))
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_disconnect = self._on_disconnect
        self.client.reconnect_delay_set(1, 1)
        self.port = port

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if not rc.is_failure:
            self.connects += 1
            self.connected.set()

    def _on_disconnect(self, *_: object) -> None:
        self.disconnects += 1
        self.connected.clear()

    def connect(self, timeout: float = 5.0) -> bool:
        try:
            self.client.connect("localhost", self.port, keepalive=5)
        except (ssl.SSLError, OSError) as exc:
            self.refused = str(exc)
            return False
        self.client.loop_start()
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        """Publish as a misbehaving client would; the broker may drop the connection for a denied
        publish (mosquitto 2.0 does, after acknowledging): paho reconnects, we carry on."""
        self.connected.wait(5)
        with contextlib.suppress(RuntimeError, ValueError):
            self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
