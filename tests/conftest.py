"""Shared fixtures: a real mosquitto, a pty-backed GNSS receiver, gpiozero's MockFactory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from tests.support.broker import Mosquitto
from tests.support.mqtt import Collector
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


def pytest_sessionstart(session: pytest.Session) -> None:
    """The daemons the tests start load compiled bytecode, as an installed unit does: with
    PYTHONDONTWRITEBYTECODE=1 in the environment each start would compile the agent from source."""
    import compileall

    root = Path(__file__).resolve().parent.parent
    for package in ("agent", "drivers", "tests", "tools"):
        compileall.compile_dir(root / package, quiet=2)


@pytest.fixture
def dispatch(broker: Mosquitto, request: pytest.FixtureRequest) -> Iterator[Collector]:
    """Dispatch's subscriber to every vehicle topic on the test's broker, one client id per test."""
    collector = Collector(broker.port, "patrol/#", client_id=f"dispatch-{request.node.name}"[:60])
    yield collector
    collector.close()

