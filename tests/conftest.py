"""Shared fixtures: a real mosquitto, a pty-backed GNSS receiver, gpiozero's MockFactory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from tests.support.broker import Mosquitto
from tests.support.pty_gnss import PtyGnss

CAPTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "nmea-captures"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free port of 127.0.0.1 (stop/kill/start at will)."""
    server = Mosquitto(tmp_path / "broker")
    server.start()
    yield server
    server.kill()


@pytest.fixture
def gnss_pty(tmp_path: Path) -> Iterator[PtyGnss]:
    """A receiver behind ``tmp_path/gnss``: write bytes, unplug, replug."""
    device = PtyGnss(tmp_path / "gnss")
    yield device
    device.close()


@pytest.fixture
def mock_factory() -> Iterator[MockFactory]:
    """gpiozero's mock pins: drive inputs, read outputs, no hardware."""
    factory = MockFactory()
    yield factory
    factory.reset()
    factory.close()


@pytest.fixture
def captures() -> Path:
    if not CAPTURES.is_dir():
        pytest.skip(f"receiver captures not found at {CAPTURES} (they live in ../shared/nmea-captures)")
    return CAPTURES
