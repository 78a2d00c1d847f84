"""Config: typed, strict, overridable from the environment within limits, and clear about every mistake."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli import main
from agent.config import SECURITY_KEYS, AgentConfig, PanicButtonConfig, load
from agent.config_load import parse
from agent.errors import ConfigError
from tests.support.agent_proc import AgentProcess, agent_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "agent.example.yaml"
THREE_MISTAKES = Path(__file__).parent / "fixtures" / "config" / "three_mistakes.yaml"

MINIMAL = """
vehicle: {id: PV-1, unit: Traffic Sofia, directorate: traffic}
mqtt: {brokers: ["mqtts://dispatch.example.org:8883"], password: s3cret-pass}
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o640)
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(path, environ or {})
    return caught.value.problems


# --- the example ------------------------------------------------------------------


def test_example_config_is_valid_and_config_check_only_misses_its_certificates() -> None:
    assert parse(EXAMPLE, {}).problems == []
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", "check", str(EXAMPLE)],
                          capture_output=True, text=True, cwd=ROOT)
    # the example names /etc/patrol-agent/{ca,vehicle}.{crt,key}: run refuses it where they are not
    assert done.returncode == 2
    found = [line for line in done.stderr.splitlines() if line.startswith(f"{EXAMPLE}:") and "problem(s)" not in line]
    assert len(found) == 3 and all("does not exist" in line for line in found), done.stderr


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()

    def keys(model: type) -> list[str]:
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


def leaves(data: Any, loc: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any]]:
    if isinstance(data, dict) and data:
        return [leaf for key, value in data.items() for leaf in leaves(value, (*loc, key))]
    return [(loc, data)]


def test_every_value_in_the_example_is_the_default_unless_marked_required() -> None:
    """The example says it shows each key's default: hold it to that, key by key."""
    loaded = parse(EXAMPLE, {})
    assert loaded.cfg is not None and loaded.data is not None
    lines = EXAMPLE.read_text().splitlines()
    minimal = {"vehicle": loaded.data["vehicle"], "mqtt": {"brokers": loaded.data["mqtt"]["brokers"]}}
    defaults = AgentConfig.model_validate(minimal).model_dump(mode="json")
    compared = 0
    for loc, value in leaves(loaded.data):
        marked = [loaded.lines[loc[:depth]] for depth in range(1, len(loc) + 1) if loc[:depth] in loaded.lines]
        if any("(required" in lines[n - 1] for n in marked):
            continue
        line = marked[-1]
        node: Any = defaults
        for part in loc:
            node = node[part]
        assert value == node, f"{EXAMPLE.name}:{line}: {'.'.join(map(str, loc))} shows {value!r}, default {node!r}"
        compared += 1
    assert compared > 50, compared
    # the commented panic button claims to show each key's default
    block = [line for line in lines if line.startswith("  # ") and line[4:].lstrip().startswith(("- ", "name", "pin",
             "pull", "active", "debounce", "trigger", "hold", "stuck"))]
    text = "\n".join(line[4:].split("  #")[0] for line in block[: block.index(
        next(b for b in block if "ignition" in b))])
    example_button = yaml.safe_load(text)[0]
    default_button = PanicButtonConfig(name="driver", pin=17).model_dump(mode="json")
    assert example_button == default_button
    assert loaded.cfg.inputs.panic_buttons == [] and loaded.cfg.outputs.led is None


# --- every mistake, with its line ------------------------------------------------------


def test_three_mistakes_and_a_duplicate_key_are_all_reported_with_their_lines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = THREE_MISTAKES.read_text().replace("  port: /dev/ttyACM0\n", "  port: /dev/ttyACM0\n  port: /dev/ttyUSB0\n")
    path = write(tmp_path, text)
    assert main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: vehicle.id: required key is missing" in err
    assert f"{path}:7: gnss.port: duplicate key (first on line 6)" in err
    assert f"{path}:8: gnss.baudrat: unknown key (did you mean 'baudrate'?)" in err
    assert f"{path}:11: mqtt.keepalive_s: input should be a valid integer" in err and "(got 'thirty')" in err
    # run's rules as well, though the schema failed: the TLS files are missing
    assert f"{path}:9: mqtt.tls.ca_file: not set" in err
    assert "problem(s): `patrol-agent run` would refuse it" in err


def test_three_mistakes_fixture_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(THREE_MISTAKES)]) == 2
    err = capsys.readouterr().err
    for key in ("vehicle.id", "gnss.baudrat", "mqtt.keepalive_s"):
        assert re.search(rf"three_mistakes.yaml:\d+: {re.escape(key)}: ", err), (key, err)


@pytest.mark.parametrize(("text", "expected"), [
    (MINIMAL + "gnss: {port: a}\ngnss: {port: b}\n", ":5: gnss: duplicate key (first on line 4)"),
    ("vehicle: [unclosed\n", "YAML error"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    (MINIMAL.replace("mqtts://dispatch.example.org:8883", "http://x"), ":3: mqtt.brokers[0]: must look like mqtts://"),
    (MINIMAL.replace("PV-1", "PV/1+#"), ":2: vehicle.id: string should match pattern"),
    (MINIMAL + "inputs: {panic_buttons: [{name: driver, pin: 17}, {name: driver, pin: 18}]}\n",
     ":4: inputs: input names must be unique"),
    (MINIMAL + "inputs: {digital: [{name: door, pin: 5, pull: none}]}\n", ":4: inputs.digital[0]: with pull: none"),
    (MINIMAL + "gnss:\n  baudrate: 12345\n", ":5: gnss.baudrate: must be one of 4800"),
    (MINIMAL + "x: !!python/object/apply:os.system [ls]\n", "YAML error"),
    ("", "vehicle: required key is missing"),
])
def test_each_kind_of_mistake_is_named_with_its_line(tmp_path: Path, text: str, expected: str) -> None:
    found = problems(write(tmp_path, text))
    assert any(expected in problem for problem in found), found


def test_a_section_level_error_does_not_dump_the_section(tmp_path: Path) -> None:
    text = MINIMAL + "inputs: {panic_buttons: [{name: driver, pin: 5}, {name: passenger, pin: 5}]}\n"
    found = problems(write(tmp_path, text))
    assert any(p.endswith(":4: inputs: two inputs share a pin") for p in found), found
    assert not any("passenger" in p or "{" in p for p in found), found


def test_error_values_are_truncated(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + f"mqtt_extra: 1\ngnss: {{port: /dev/x, baudrate: '{'9' * 5000}'}}\n"))
    baud = next(p for p in found if "gnss.baudrate" in p)
    assert len(baud) < 250 and "..." in baud, baud


# --- secrets ----------------------------------------------------------------------------


def test_password_never_shows_in_problems(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL.replace("password: s3cret-pass", "password: [s3cret-pass]")))
    assert "s3cret-pass" not in str(found)
    assert any("mqtt.password" in p for p in found)


def test_a_mis_cased_or_unknown_key_never_prints_its_value(tmp_path: Path) -> None:
    text = MINIMAL.replace("password: s3cret-pass", "Password: s3cret-pass, passwrd: t0ps3cret")
    found = problems(write(tmp_path, text))
    assert any("mqtt.Password: unknown key (did you mean 'password'?)" in p for p in found), found
    assert any("mqtt.passwrd: unknown key" in p for p in found), found
    assert "s3cret" not in str(found) and "t0ps3cret" not in str(found)


@pytest.mark.parametrize("url", ["mqtts://fleet:hunter2@dispatch.example.org:8883",
                                 "mqtts://:hunter2@dispatch.example.org", "mqtts://fleet@dispatch.example.org"])
def test_a_broker_url_with_credentials_is_refused_without_echoing_them(
        tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL.replace("mqtts://dispatch.example.org:8883", url))
    found = problems(path)
    assert any("mqtt.brokers[0]: must not carry a user name or password" in p for p in found), found
    assert "hunter2" not in str(found) and "fleet@" not in str(found)
    assert main(["config", "check", str(path)]) == 2
    out = capsys.readouterr()
    assert "hunter2" not in out.err + out.out


def test_password_file_must_not_be_readable_by_others(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "mqtt.password"
    secret.write_text("s3cret-from-file\n")
    secret.chmod(0o644)
    text = MINIMAL.replace("password: s3cret-pass", f"password_file: {secret}")
    found = problems(write(tmp_path, text))
    assert any(":3: mqtt.password_file:" in p and "readable by others (0644)" in p for p in found), found
    secret.chmod(0o640)
    cfg = load(write(tmp_path, text), {})
    assert cfg.mqtt.password is not None and cfg.mqtt.password.get_secret_value() == "s3cret-from-file"
    assert main(["config", "show", str(tmp_path / "agent.yaml")]) == 0
    out = capsys.readouterr().out
    assert "s3cret-from-file" not in out and "password: '***'" in out


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("password: s3cret-pass", "password: a, password_file: /etc/x")
    assert any("password and password_file are both set" in p for p in problems(write(tmp_path, text)))


def test_defaults_are_filled_and_secrets_redacted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", str(write(tmp_path, MINIMAL))]) == 0
    out = capsys.readouterr().out
    assert "s3cret-pass" not in out and "password: '***'" in out
    assert "baudrate: 9600" in out and "commit_window_ms: 1000" in out


# --- YAML that attacks the reader -----------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_within_a_second(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9))
    path = write(tmp_path, MINIMAL + bomb)
    began = time.monotonic()
    found = problems(path)
    assert time.monotonic() - began < 1.0
    assert any(":4:" in p and "anchors (&name) are not allowed" in p for p in found), found
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agent.cli", "config", "check", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert done.returncode == 2 and "anchors" in done.stderr


def test_an_alias_alone_is_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL + "gnss: {port: *p}\n"))
    assert any("aliases (*name) are not allowed" in p or "found undefined alias" in p for p in found), found


def test_a_huge_or_deeply_nested_file_is_refused(tmp_path: Path) -> None:
    assert any("larger than" in p for p in problems(write(tmp_path, MINIMAL + "#" * (2 << 20) + "\n")))
    assert any("nested too deep" in p or "YAML error" in p
               for p in problems(write(tmp_path, "a: " + "[" * 5000 + "]" * 5000 + "\n")))


# --- the environment --------------------------------------------------------------------


def test_environment_overrides_ordinary_keys_and_says_which(tmp_path: Path) -> None:
    loaded = parse(write(tmp_path, MINIMAL), {
        "PATROL_AGENT__GNSS__BAUDRATE": "38400",
        "patrol_agent__reporting__distance_m": "123.5",
        "PATROL_AGENT__OUTPUTS__COVERT": "true",
    })
    assert loaded.problems == [] and loaded.cfg is not None
    assert loaded.cfg.gnss.baudrate == 38400 and loaded.cfg.reporting.distance_m == 123.5
    assert loaded.cfg.outputs.covert is True
    assert loaded.overrides == ["gnss.baudrate (from PATROL_AGENT__GNSS__BAUDRATE)",
                                "outputs.covert (from PATROL_AGENT__OUTPUTS__COVERT)",
                                "reporting.distance_m (from patrol_agent__reporting__distance_m)"]
    assert not any(v in str(loaded.overrides) for v in ("38400", "123.5", "true"))


@pytest.mark.parametrize(("variable", "value"), [
    ("PATROL_AGENT__MQTT__LAB_MODE", "true"),
    ("PATROL_AGENT__SIMULATION", "true"),
    ("PATROL_AGENT__MQTT__TLS__CA_FILE", "null"),
    ("PATROL_AGENT__MQTT__TLS__KEY_FILE", "/tmp/k"),
    ("PATROL_AGENT__MQTT__TLS__MIN_VERSION", "1.3"),
    ("PATROL_AGENT__MQTT__TLS", "{ca_file: null}"),
    ("PATROL_AGENT__MQTT__BROKERS__0", "mqtt://evil.example.org"),
    ("PATROL_AGENT__MQTT__USERNAME", "other"),
    ("PATROL_AGENT__MQTT__PASSWORD", "pw"),
    ("PATROL_AGENT__MQTT__PASSWORD_FILE", "/tmp/pw"),
    ("PATROL_AGENT__MQTT", "{lab_mode: true}"),
    ("PATROL_AGENT__ALLOW_ENV_SECURITY_OVERRIDES", "true"),
])
def test_an_environment_override_of_a_security_setting_is_refused_by_default(
        tmp_path: Path, variable: str, value: str) -> None:
    found = problems(write(tmp_path, MINIMAL), {variable: value})
    assert any(p.startswith(f"{variable}: ") and "is a security setting" in p for p in found), found
    assert value not in str(found) or value in ("true", "null")


def test_the_config_file_can_allow_security_overrides_but_never_the_permission_itself(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "allow_env_security_overrides: true\n")
    cfg = load(path, {"PATROL_AGENT__MQTT__BROKERS__0": "mqtts://other.example.org:8883",
                      "PATROL_AGENT__MQTT__TLS__MIN_VERSION": "1.3", "PATROL_AGENT__MQTT__LAB_MODE": "true"})
    assert cfg.mqtt.brokers == ["mqtts://other.example.org:8883"] and cfg.mqtt.tls.min_version == "1.3"
    assert cfg.mqtt.lab_mode is True
    found = problems(write(tmp_path, MINIMAL), {"PATROL_AGENT__ALLOW_ENV_SECURITY_OVERRIDES": "true",
                                                 "PATROL_AGENT__MQTT__LAB_MODE": "true"})
    assert len(found) == 2 and all("is a security setting" in p for p in found), found


def test_every_security_key_is_a_real_key() -> None:
    for key in SECURITY_KEYS:
        model: Any = AgentConfig
        for part in key:
            assert part in model.model_fields, key
            model = model.model_fields[part].annotation


def test_unknown_environment_key_is_an_error(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL), {"PATROL_AGENT__GNSS__PROT": "/dev/ttyUSB0"})
    assert found == ["PATROL_AGENT__GNSS__PROT: unknown key gnss.prot (did you mean 'port'?)"]


def test_environment_value_of_the_wrong_type_names_the_key_and_the_variable_not_the_value(tmp_path: Path) -> None:
    found = problems(write(tmp_path, MINIMAL), {"PATROL_AGENT__GNSS__BAUDRATE": "12345"})
    assert found[0].startswith("PATROL_AGENT__GNSS__BAUDRATE: gnss.baudrate: must be one of"), found
    assert "12345" not in found[0]


def test_the_daemon_logs_each_override_by_key_never_by_value(tmp_path: Path, gnss_pty: Any) -> None:
    from tests.support.broker import Mosquitto

    server = Mosquitto(tmp_path / "broker")
    server.start()
    agent = AgentProcess(tmp_path, agent_config(tmp_path, server.port, gnss_pty.path))
    try:
        agent.start(env={"PATROL_AGENT__REPORTING__DISTANCE_M": "4321.5"})
        time.sleep(0.3)
    finally:
        agent.kill9()
        server.kill()
    log = agent.log.read_text()
    assert "reporting.distance_m (from PATROL_AGENT__REPORTING__DISTANCE_M)" in log, log[-2000:]
    assert "4321.5" not in log


def test_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
