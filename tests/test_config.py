"""Config: typed, strict, overridable from the environment, and clear about every mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.config import load
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "agent.example.yaml"
THREE_MISTAKES = Path(__file__).parent / "fixtures" / "config" / "three_mistakes.yaml"

MINIMAL = """
vehicle: {id: PV-1, unit: Traffic Sofia, directorate: traffic}
mqtt: {brokers: ["mqtts://dispatch.example.org:8883"], password: s3cret-pass}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


def test_example_config_is_valid_through_the_installed_command() -> None:
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", "check", str(EXAMPLE)],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout


def test_three_mistakes_exit_2_and_each_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(THREE_MISTAKES)]) == 2
    err = capsys.readouterr().err
    assert "gnss.baudrat: unknown key (did you mean 'baudrate'?) (got 9600)" in err
    assert "mqtt.keepalive_s: input should be a valid integer" in err and "(got 'thirty')" in err
    assert "vehicle.id: required key is missing" in err
    assert "3 problem(s)" in err


def test_example_documents_every_key() -> None:
    from agent.config import AgentConfig

    text = EXAMPLE.read_text()

    def keys(model: type, prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            found.append(name)
            inner = field.annotation
            for candidate in (inner, *getattr(inner, "__args__", ())):
                for leaf in (candidate, *getattr(candidate, "__args__", ())):
                    if isinstance(leaf, type) and hasattr(leaf, "model_fields"):
                        found += keys(leaf)
        return found

    missing = sorted({k for k in keys(AgentConfig) if f"{k}:" not in text})
    assert missing == []


def test_defaults_are_filled_and_secrets_redacted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(write(tmp_path, MINIMAL))]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pass" not in out and "password: '***'" in out
    assert "baudrate: 9600" in out and "commit_window_ms: 1000" in out


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, MINIMAL), {
        "PATROL_AGENT__GNSS__BAUDRATE": "38400",
        "patrol_agent__mqtt__tls__min_version": "1.3",
        "PATROL_AGENT__MQTT__BROKERS__0": "mqtts://other.example.org:8883",
        "PATROL_AGENT__OUTPUTS__COVERT": "true",
    })
    assert cfg.gnss.baudrate == 38400
    assert cfg.mqtt.tls.min_version == "1.3"
    assert cfg.mqtt.brokers == ["mqtts://other.example.org:8883"]
    assert cfg.outputs.covert is True


def test_unknown_environment_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, MINIMAL), {"PATROL_AGENT__GNSS__PROT": "/dev/ttyUSB0"})
    assert caught.value.problems == ["PATROL_AGENT__GNSS__PROT: unknown key gnss.prot (did you mean 'port'?)"]


def test_environment_value_of_the_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, MINIMAL), {"PATROL_AGENT__GNSS__BAUDRATE": "12345"})
    assert caught.value.problems[0].startswith("gnss: baudrate must be one of")


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + "gnss: {port: a}\ngnss: {port: b}\n", "duplicate key 'gnss'"),
    ("vehicle: [unclosed\n", "YAML syntax error"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    (MINIMAL.replace("mqtts://dispatch.example.org:8883", "http://x"), "mqtt.brokers[0]: must look like mqtts://"),
    (MINIMAL.replace("PV-1", "PV/1+#"), "vehicle.id: string should match pattern"),
    (MINIMAL + "inputs: {panic_buttons: [{name: driver, pin: 17}, {name: driver, pin: 18}]}\n",
     "inputs: input names must be unique"),
    (MINIMAL + "inputs: {digital: [{name: door, pin: 5, pull: none}]}\n", "inputs.digital[0]: with pull: none"),
    ("", "vehicle: required key is missing"),
])
def test_each_kind_of_mistake_is_named(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text), {})
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_password_never_shows_in_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, MINIMAL.replace("password: s3cret-pass", "password: [s3cret-pass]")), {})
    assert "s3cret-pass" not in str(caught.value)
    assert "mqtt.password" in str(caught.value)


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
