"""A dispatch-side subscriber for tests: records what the broker actually delivered."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float  # monotonic

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """Subscribes to ``topic`` at QoS 1 with a persistent session (survives broker restarts)."""

    def __init__(self, port: int, topic: str = "#", *, client_id: str = "test-dispatch", host: str = "127.0.0.1",
                 persistent: bool = True, **tls: Any) -> None:
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._topic = topic
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        if tls:
            self.client.tls_set(**tls)
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_: self.connected.clear()
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(host, port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise TimeoutError("test subscriber could not connect")

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not rc.is_failure:
            client.subscribe(self._topic, qos=1)  # "connected" is set on the SUBACK, not before

    def _on_subscribe(self, *_: Any) -> None:
        self.connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), time.monotonic()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met in {timeout} s; got {len(self.messages)} messages")
                self._cond.wait(left)
            return list(self.messages)

    def wait_quiet(self, seconds: float = 2.0, timeout: float = 30.0) -> list[Received]:
        """Until nothing has arrived for ``seconds`` (the backlog has drained)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                last = self.messages[-1].at if self.messages else 0.0
            if time.monotonic() - last >= seconds:
                break
            time.sleep(0.1)
        with self._cond:
            return list(self.messages)

    def on(self, suffix: str) -> list[Received]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
