"""Typed configuration: the models of one YAML file, overridable by environment variables.

Parsed once at start (and on SIGHUP) into frozen pydantic models; each
component receives only its own slice (``cfg.gnss``, ``cfg.mqtt``...).
Unknown keys, duplicate keys and wrong types are errors that name the key and
its line: a typo must never pass silently. ``config/agent.example.yaml``
documents every key and its default. Reading the file, the environment
overrides and the wording of problems live in :mod:`agent.config_load`;
:func:`load` is the entry point. Runs wherever a config is read (the daemon's
main thread, the CLI tools).

Environment overrides: ``PATROL_AGENT__<SECTION>__<KEY>=value``, one ``__``
per level, case-insensitive, list items by index. Security settings (see
:data:`SECURITY_KEYS`: brokers, TLS files, lab mode, simulation, user name,
password) may be overridden only if the config FILE says
``allow_env_security_overrides: true``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

ENV_PREFIX = "PATROL_AGENT__"
#: the top-level key that lets the environment override :data:`SECURITY_KEYS` (default false)
ALLOW_ENV_SECURITY = "allow_env_security_overrides"
#: settings the environment may not change unless the config file allows it (a key and all under it)
SECURITY_KEYS: tuple[tuple[str, ...], ...] = (
    ("mqtt", "brokers"), ("mqtt", "tls"), ("mqtt", "lab_mode"), ("mqtt", "username"), ("mqtt", "password"),
    ("mqtt", "password_file"), ("simulation",), (ALLOW_ENV_SECURITY,),
)
BAUD_RATES = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800)
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _broker_url(value: str) -> str:
    parts = urlsplit(value)
    if "@" in parts.netloc:
        raise ValueError("must not carry a user name or password (they would show in logs and health): "
                         "use mqtt.username and mqtt.password_file")
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
    no_time_after_s: Seconds = 60.0  # sentences without a usable time for this long: state no_time
    reopen_initial_s: Seconds = 0.5
    reopen_max_s: Seconds = 10.0
    max_fix_age_s: Seconds = 3.0

    @field_validator("baudrate")
    @classmethod
    def _baudrate(cls, value: int) -> int:
        if value not in BAUD_RATES:
            raise ValueError(f"must be one of {', '.join(map(str, BAUD_RATES))}")
        return value


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
    password_file: Path | None = None
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

    @model_validator(mode="after")
    def _one_password(self) -> MqttConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError("password and password_file are both set: keep password_file")
        return self


class OutboxConfig(Section):
    path: Path | None = None
    commit_window_ms: int = Field(default=1000, ge=0, le=5000)
    max_messages: int = Field(default=500_000, ge=100)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)
    max_age_h: float = Field(default=72.0, gt=0)
    sync_window_s: float = Field(default=30.0, ge=1, le=600)
    ram_ring: int = Field(default=10_000, ge=100, le=1_000_000)


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


class GpioConfig(Section):
    """gpiozero's pin factory: ``lgpio`` on a Raspberry Pi; ``auto`` takes lgpio where it can be opened and
    otherwise falls back to ``native``, reported as a fault; ``mock`` whenever ``simulation`` is on."""

    pin_factory: Literal["auto", "lgpio", "mock", "native", "rpigpio", "pigpio"] = "auto"


class PanicConfig(Section):
    republish_s: Seconds = 15.0
    test_timeout_s: Seconds = 120.0


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
    gpio: GpioConfig = GpioConfig()
    reporting: ReportingConfig = ReportingConfig()
    panic: PanicConfig = PanicConfig()
    health: HealthConfig = HealthConfig()
    state_dir: Path = Path("/var/lib/patrol-agent")
    runtime_dir: Path = Path("/run/patrol-agent")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    simulation: bool = False
    allow_env_security_overrides: bool = False

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.state_dir / "outbox.sqlite"

    def redacted(self) -> dict[str, Any]:
        """The effective config as plain data, secrets replaced by ``***``."""
        data = self.model_dump(mode="json")
        if data["mqtt"].get("password") is not None:
            data["mqtt"]["password"] = "***"  # noqa: S105 - the redaction marker
        return data


def load(path: Path, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Read, override and validate; raise :class:`~agent.errors.ConfigError` with every problem."""
    from agent.config_load import load as _load

    return _load(path, environ)
