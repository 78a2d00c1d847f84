"""The GPIO pin factory: lgpio where it can be opened, mock in simulation, a fallback reported, never silent.

No test here needs a Raspberry Pi. The real loader is run on this machine (lgpio is installed with the
project, but there is no GPIO chip); the choice between factories is tested with a loader that stands
gpiozero's MockFactory in for the hardware ones, as the seam ``select_factory(load=...)`` allows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from agent.config import AgentConfig, GpioConfig
from drivers.gpio import FactoryChoice, read_level, select_factory


class Loader:
    """Stands in for gpiozero's factories: ``works`` are made (as mock pins), the others raise what is given."""

    def __init__(self, works: set[str], errors: dict[str, BaseException] | None = None) -> None:
        self.works = works
        self.errors = errors or {}
        self.tried: list[str] = []
        self.made: list[MockFactory] = []

    def __call__(self, name: str) -> Any:
        self.tried.append(name)
        if name in self.works:
            factory = MockFactory()
            self.made.append(factory)
            return factory
        raise self.errors.get(name, OSError(f"cannot open {name}"))


@pytest.fixture
def closing() -> Iterator[list[FactoryChoice]]:
    choices: list[FactoryChoice] = []
    yield choices
    for choice in choices:
        if choice.factory is not None:
            choice.factory.close()


def test_auto_chooses_lgpio_where_it_opens(closing: list[FactoryChoice]) -> None:
    loader = Loader({"lgpio", "native"})
    choice = select_factory("auto", simulation=False, load=loader)
    closing.append(choice)
    assert (choice.name, choice.is_fallback, choice.problems) == ("lgpio", False, [])
    assert loader.tried == ["lgpio"]


def test_auto_without_lgpio_falls_back_to_native_and_says_so(closing: list[FactoryChoice]) -> None:
    loader = Loader({"native"}, {"lgpio": ImportError("No module named 'lgpio'")})
    choice = select_factory("auto", simulation=False, load=loader)
    closing.append(choice)
    assert choice.name == "native" and choice.is_fallback and choice.usable
    assert choice.problems[0] == "lgpio: No module named 'lgpio'"
    assert "fell back to gpiozero's native factory" in choice.problems[1]
    assert choice.as_dict() == {"factory": "native", "requested": "auto", "is_fallback": True,
                                "problems": choice.problems}


def test_an_explicit_factory_that_cannot_open_is_not_replaced_by_another() -> None:
    loader = Loader({"native"}, {"lgpio": OSError("can not open gpiochip")})
    choice = select_factory("lgpio", simulation=False, load=loader)
    assert choice.factory is None and not choice.usable
    assert choice.problems == ["lgpio: can not open gpiochip"]
    assert loader.tried == ["lgpio"]


def test_simulation_always_uses_mock_pins(closing: list[FactoryChoice]) -> None:
    choice = select_factory("lgpio", simulation=True)
    closing.append(choice)
    assert choice.name == "mock" and isinstance(choice.factory, MockFactory) and not choice.is_fallback


def test_on_this_machine_lgpio_is_installed_and_auto_reports_why_there_are_no_pins() -> None:
    import lgpio  # a dependency of the project on x86_64 and aarch64

    assert lgpio is not None
    choice = select_factory("auto", simulation=False)  # the real loaders: no GPIO chip, not a Pi
    if choice.factory is not None:
        choice.factory.close()
        pytest.skip("this machine has GPIO")
    assert choice.is_fallback and choice.name == "none"
    assert [p.split(":")[0] for p in choice.problems] == ["lgpio", "native"], choice.problems


def test_the_setting_is_part_of_the_config() -> None:
    assert GpioConfig().pin_factory == "auto"
    cfg = AgentConfig.model_validate({"vehicle": {"id": "PV-1", "unit": "u", "directorate": "d"},
                                      "mqtt": {"brokers": ["mqtts://h:8883"]}, "gpio": {"pin_factory": "lgpio"}})
    assert cfg.gpio.pin_factory == "lgpio"
    with pytest.raises(ValueError, match="pin_factory"):
        AgentConfig.model_validate({"vehicle": {"id": "PV-1", "unit": "u", "directorate": "d"},
                                    "mqtt": {"brokers": ["mqtts://h:8883"]}, "gpio": {"pin_factory": "sysfs"}})


def test_read_level_opens_reads_and_closes_an_input(mock_factory: MockFactory) -> None:
    from agent.config import PanicButtonConfig

    assert read_level(PanicButtonConfig(name="driver", pin=17), mock_factory) is False  # pulled up: idle
    wired = PanicButtonConfig(name="rear", pin=5, pull="none", active="low")  # external pull-up
    mock_factory.pin(5).drive_low()  # held down (or stuck)
    assert read_level(wired, mock_factory) is True
    assert read_level(wired, mock_factory) is True, "the pin was released: it can be opened again"
