"""The test infrastructure itself: a broker that stops, dies and returns; a pty; mock pins."""

from __future__ import annotations

import contextlib
import os
import time

import paho.mqtt.client as mqtt
import pytest
from gpiozero import LED, Button
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.broker import Mosquitto, wait_port
from tests.support.mqtt import Collector
from tests.support.pty_gnss import PtyGnss


def _publish(port: int, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fixture-pub")
    client.connect("127.0.0.1", port)
    client.loop_start()
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(5)
    assert info.is_published()
    client.loop_stop()
    client.disconnect()


def test_broker_delivers_and_survives_stop_kill_restart(broker: Mosquitto) -> None:
    collector = Collector(broker.port, "t/#")
    try:
        _publish(broker.port, "t/one", b"1")
        collector.wait_for(lambda m: len(m) == 1)
        broker.stop()
        with pytest.raises(OSError):
            wait_port(broker.port, timeout=0.3)
        broker.start()
        _publish(broker.port, "t/two", b"2")
        collector.wait_for(lambda m: len(m) == 2)
        broker.kill()
        assert not broker.running
        broker.start()
        _publish(broker.port, "t/three", b"3")
        messages = collector.wait_for(lambda m: len(m) == 3)
        assert [m.payload for m in messages] == [b"1", b"2", b"3"]
    finally:
        collector.close()


def test_pty_carries_bytes_and_unplugs(gnss_pty: PtyGnss) -> None:
    fd = os.open(gnss_pty.path, os.O_RDONLY | os.O_NOCTTY)
    try:
        gnss_pty.write(b"$GPTXT,hello*00\r\n")
        time.sleep(0.05)
        assert os.read(fd, 100) == b"$GPTXT,hello*00\r\n"
        gnss_pty.unplug()
        assert not gnss_pty.path.exists()
        with contextlib.suppress(OSError):  # a hung-up tty reads as end-of-file (or EIO), as on a USB unplug
            assert os.read(fd, 100) == b""
    finally:
        os.close(fd)
    gnss_pty.plug()
    assert gnss_pty.path.exists()


def test_mock_factory_drives_inputs_and_reads_outputs(mock_factory: MockFactory) -> None:
    button = Button(17, pin_factory=mock_factory)
    led = LED(22, pin_factory=mock_factory)
    pin = mock_factory.pin(17)
    pin.drive_low()
    assert button.is_pressed
    led.on()
    assert mock_factory.pin(22).state == 1
