"""Typed configuration: one YAML file, overridable by environment variables.

Parsed once at start into frozen pydantic models; each component receives
only its own slice (``cfg.gnss``, ``cfg.mqtt``...). Unknown keys, duplicate
keys and wrong types are errors that name the key: a typo must never pass
silently. ``config/agent.example.yaml`` documents every key and its default.

Environment overrides: ``PATROL_AGENT__<SECTION>__<KEY>=value``, one ``__``
per level, case-insensitive, list items by index
(``PATROL_AGENT__MQTT__BROKERS__0=mqtts://...``). The value is read as a YAML
scalar converted by the key's type (``9600``, ``true``, ``1.3``), ``null``
for none, or a YAML flow list/mapping (``[a, b]``). An override naming no
known key is an error, like a typo in the file.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from agent.errors import ConfigError

ENV_PREFIX = "PATROL_AGENT__"
BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800)
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _broker_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("must look like mqtts://host:8883 (or mqtt:// for a lab broker)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return value


BrokerUrl = Annotated[str, AfterValidator(_broker_url)]
Seconds = Annotated[float, Field(gt=0)]


class VehicleConfig(Section):
    id: str = Field(pattern=_ID, description="unique vehicle id; also the MQTT topic level")
    unit: str = Field(min_length=1, description="owning unit or station")
    directorate: str = Field(min_length=1, description="border, general, traffic...")


class GnssConfig(Section):
    port: str = "/dev/serial0"
    baudrate: int = 9600
    default_date: date | None = None
    quiet_flush_ms: int = Field(default=40, ge=5, le=500)
    no_data_after_s: Seconds = 3.0
    no_nmea_after_s: Seconds = 5.0
    reopen_initial_s: Seconds = 0.5
    reopen_max_s: Seconds = 10.0
    max_fix_age_s: Seconds = 3.0

    @model_validator(mode="after")
    def _check(self) -> GnssConfig:
        if self.baudrate not in BAUD_RATES:
            raise ValueError(f"baudrate must be one of {', '.join(map(str, BAUD_RATES))}")
        return self


class TlsConfig(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    min_version: Literal["1.2", "1.3"] = "1.2"


class MqttConfig(Section):
    brokers: list[BrokerUrl] = Field(min_length=1)
    protocol: Literal["auto", "3.1.1", "5"] = "auto"
    client_id: str | None = Field(default=None, pattern=_ID)
    topic_prefix: str = Field(default="patrol", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
    username: str | None = None
    password: SecretStr | None = None
    tls: TlsConfig = TlsConfig()
    keepalive_s: int = Field(default=30, ge=2, le=1200)
    ack_timeout_s: Seconds = 15.0
    connect_timeout_s: Seconds = 10.0
    inflight_window: int = Field(default=20, ge=1, le=100)
    backoff_initial_s: Seconds = 1.0
    backoff_max_s: Seconds = 60.0
    alert_retry_s: Seconds = 2.0
    stable_after_s: Seconds = 60.0
    backlog_rate_per_s: float = Field(default=0.0, ge=0)
    lab_mode: bool = False


class OutboxConfig(Section):
    path: Path | None = None
    commit_window_ms: int = Field(default=1000, ge=0, le=5000)
    max_messages: int = Field(default=500_000, ge=100)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    max_age_h: float = Field(default=72.0, gt=0)


class InputPinConfig(Section):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    pin: int = Field(ge=0, le=63)
    pull: Literal["up", "down", "none"] = "up"
    active: Literal["low", "high"] | None = None
    debounce_ms: int = Field(default=30, ge=0, le=1000)

    @property
    def active_high(self) -> bool:
        if self.active is not None:
            return self.active == "high"
        return self.pull == "down"

    @model_validator(mode="after")
    def _check(self) -> InputPinConfig:
        if self.pull == "none" and self.active is None:
            raise ValueError("with pull: none, say which level is active (active: low|high)")
        if self.active is not None and self.pull != "none" and self.active_high != (self.pull == "down"):
            raise ValueError(f"with pull: {self.pull} the input is active {'low' if self.pull == 'up' else 'high'}; "
                             "for the other level use pull: none and an external resistor")
        return self


class PanicButtonConfig(InputPinConfig):
    trigger: Literal["press", "hold"] = "hold"
    hold_s: float = Field(default=1.0, ge=0, le=10)
    stuck_after_s: float = Field(default=30.0, gt=0)


class DigitalInputConfig(InputPinConfig):
    kind: Literal["ignition", "lights", "siren", "door", "other"] = "other"


class CancelConfig(Section):
    presses: int = Field(default=3, ge=2, le=10)
    within_s: float = Field(default=4.0, gt=0)
    short_s: float = Field(default=0.8, gt=0)
    not_before_s: float = Field(default=10.0, ge=0)


class InputsConfig(Section):
    panic_buttons: list[PanicButtonConfig] = []
    digital: list[DigitalInputConfig] = []
    cancel: CancelConfig = CancelConfig()

    @model_validator(mode="after")
    def _unique(self) -> InputsConfig:
        names = [i.name for i in (*self.panic_buttons, *self.digital)]
        pins = [i.pin for i in (*self.panic_buttons, *self.digital)]
        if len(set(names)) != len(names):
            raise ValueError("input names must be unique")
        if len(set(pins)) != len(pins):
            raise ValueError("two inputs share a pin")
        return self


class OutputPinConfig(Section):
    pin: int = Field(ge=0, le=63)
    active: Literal["high", "low"] = "high"


class OutputsConfig(Section):
    led: OutputPinConfig | None = None
    buzzer: OutputPinConfig | None = None
    covert: bool = False


class PanicConfig(Section):
    republish_s: Seconds = 15.0


class ReportingConfig(Section):
    moving_interval_s: Seconds = 10.0
    stopped_interval_s: Seconds = 120.0
    moving_above_mps: float = Field(default=1.5, ge=0)
    distance_m: float = Field(default=200.0, gt=0)
    heading_change_deg: float = Field(default=30.0, gt=0, le=180)
    speed_change_mps: float = Field(default=5.0, gt=0)
    emergency_interval_s: Seconds = 1.0


class HealthConfig(Section):
    interval_s: Seconds = 300.0


class AgentConfig(Section):
    vehicle: VehicleConfig
    gnss: GnssConfig = GnssConfig()
    mqtt: MqttConfig
    outbox: OutboxConfig = OutboxConfig()
    inputs: InputsConfig = InputsConfig()
    outputs: OutputsConfig = OutputsConfig()
    reporting: ReportingConfig = ReportingConfig()
    panic: PanicConfig = PanicConfig()
    health: HealthConfig = HealthConfig()
    state_dir: Path = Path("/var/lib/patrol-agent")
    runtime_dir: Path = Path("/run/patrol-agent")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    simulation: bool = False

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.state_dir / "outbox.sqlite"

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by ``***``."""
        data = self.model_dump(mode="json")
        if data["mqtt"].get("password") is not None:
            data["mqtt"]["password"] = "***"  # noqa: S105 - the redaction marker
        return data


# --- loading ----------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; we refuse both."""


def _mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        place = f":{where.line + 1}:{where.column + 1}" if where else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"{path}{place}: YAML syntax error: {what}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections (got {type(data).__name__})"])
    return data


def apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> list[str]:
    """Apply ``PATROL_AGENT__...`` overrides to ``data`` in place; return problems."""
    problems: list[str] = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            problems.append(f"{name}: empty key level in the variable name")
            continue
        value = _env_value(environ[name])
        problem = _set_path(data, path, value, AgentConfig)
        if problem:
            problems.append(f"{name}: {problem}")
    return problems


def _env_value(text: str) -> Any:
    """Numbers and booleans stay text (pydantic converts them by the key's type,
    so a version "1.3" stays "1.3"); lists and mappings are read as YAML flow."""
    if text.strip() in ("null", "~"):
        return None
    if text.lstrip().startswith(("[", "{")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text
    return text


def _set_path(data: Any, path: list[str], value: Any, model: Any) -> str | None:
    node = data
    for depth, key in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) > len(node):
                return f"{'.'.join(path[:depth])}[{key}]: no such list item"
            index = int(key)
            if last:
                node[index:index + 1] = [value]
                return None
            node = node[index]
            continue
        if model is not None and isinstance(model, type) and issubclass(model, BaseModel):
            if key not in model.model_fields:
                return f"unknown key {'.'.join(path[:depth + 1])}{_suggest(key, model.model_fields)}"
            model = _model_of(model.model_fields[key].annotation)
        if last:
            node[key] = value
            return None
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        node = child
    return None


def _model_of(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
        for inner in getattr(candidate, "__args__", ()):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def _suggest(key: str, choices: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _loc(parts: tuple[int | str, ...]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _got(value: Any, loc: str) -> str:
    if re.search(r"password|secret|key_pass", loc):
        return "got ***"
    shown = repr(value)
    return f"got {shown[:60] + '...' if len(shown) > 60 else shown}"


def describe(error: ValidationError, data: Any) -> list[str]:
    """Turn pydantic's errors into ``key.path: what is wrong (got ...)`` lines."""
    problems = []
    for item in error.errors():
        loc = _loc(item["loc"])
        kind = item["type"]
        if kind == "missing":
            problems.append(f"{loc}: required key is missing (got nothing)")
        elif kind == "extra_forbidden":
            parent = _parent_model(item["loc"][:-1])
            hint = _suggest(str(item["loc"][-1]), parent.model_fields) if parent else ""
            problems.append(f"{loc}: unknown key{hint} ({_got(item['input'], loc)})")
        else:
            msg = item["msg"].removeprefix("Value error, ")
            problems.append(f"{loc}: {msg[0].lower() + msg[1:]} ({_got(item['input'], loc)})")
    return problems


def _parent_model(loc: tuple[int | str, ...]) -> Any:
    model: Any = AgentConfig
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


def load(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override and validate; raise :class:`ConfigError` with every problem."""
    data = read_yaml(path)
    problems = apply_env(data, os.environ if environ is None else environ)
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        problems.extend(describe(exc, data))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg
