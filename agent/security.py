"""Secure by default: the ONE check of a config and of its certificate and key, used by ``run``,
``config check``, doctor and provision.

:func:`check` reads a config file (:mod:`agent.config_load`: every problem,
with its line) and applies run's rules. Refused unless ``mqtt.lab_mode``
says this is a lab: a plain-TCP broker, TLS without an explicit CA, no client
certificate; and for the files (:func:`check_tls`, built on ``cryptography``):
a path that is relative (the service runs from ``/``), missing or unreadable;
a CA or certificate that does not parse or has expired; a certificate not yet
valid (a warning only while the system clock is not synchronised: a Pi has no
RTC), not issued to this vehicle (its CN must be the vehicle id: the broker
takes the CN as user name and client id), not for client authentication, or
not signed by the configured CA; a key that does not belong to the
certificate, is encrypted, is readable by others, writable by its group or
others, or readable by a group other than the service's (0600, or 0640
root:patrol-agent). Run by root (config check, doctor, provision), the check
also asks whether the ``patrol-agent`` user can read each file, and, where
the unit is installed, warns of paths its sandbox hides (ProtectHome,
PrivateTmp). TLS itself is
always 1.2 or newer with the broker's hostname verified: no setting turns
either off. In lab mode each problem is a warning at every start.

Runs in the CLI process, before anything connects. In ``run`` the certificate
inspection runs in a short-lived child process when the process has no other
thread, so that the daemon itself never loads ``cryptography`` (~9 MB RSS).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import select
import signal
import stat
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from agent.config import ALLOW_ENV_SECURITY, BrokerUrl, TlsConfig
from agent.config_load import Loaded, parse

SERVICE = "patrol-agent"  # the service's user and group
EXPIRY_WARNING = timedelta(days=30)
MAX_PEM_BYTES = 1 << 20
#: the installed unit (tools/install.sh), whose sandbox hides these paths (ProtectHome=yes, PrivateTmp=yes)
UNIT = Path("/etc/systemd/system/patrol-agent.service")
HIDDEN = ("/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/")  # noqa: S108 - names, not files we use


@dataclass(frozen=True)
class Finding:
    key: str  # the config key it is about: "mqtt.tls.key_file"
    message: str
    hint: str = ""
    warning: bool = False  # worth saying at every start, never a reason to refuse

    @property
    def text(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


@dataclass
class TlsReport:
    """What :func:`check_tls` found; ``facts`` are for doctor's PASS lines ("ca", "cert", "key")."""

    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    def of(self, key: str) -> list[Finding]:
        return [f for f in self.findings if f.key == key]


@dataclass
class Checked:
    cfg: Any  # the AgentConfig, or None if the file does not validate
    problems: list[str]  # each "WHERE: key: what": refuse to start, exit 2
    warnings: list[str]  # say at every start (lab mode, clock not synchronised, expiring soon)
    overrides: list[str]  # keys set from the environment, for the start-up log (never their values)
    loaded: Loaded | None = None


# --- the files ---------------------------------------------------------------------


def _service_account() -> tuple[int, set[int]] | None:
    """(uid, gids) of the service user, when this is root on a unit where it exists."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(SERVICE)
    except KeyError:
        return None
    gids = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if SERVICE in g.gr_mem}
    return user.pw_uid, gids


def _may(st: os.stat_result, account: tuple[int, set[int]], bits: tuple[int, int, int]) -> bool:
    uid, gids = account
    if st.st_uid == uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in gids:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


def _service_cannot_read(path: Path, account: tuple[int, set[int]] | None) -> str | None:
    if account is None:
        return None
    absolute = path.absolute()
    for parent in reversed(absolute.parents):
        with contextlib.suppress(OSError):
            if not _may(parent.stat(), account, (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)):
                return f"the {SERVICE} user cannot enter {parent}"
    with contextlib.suppress(OSError):
        if not _may(absolute.stat(), account, (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)):
            return f"the {SERVICE} user cannot read it"
    return None


def _read(key: str, path: Path, report: TlsReport, as_service: bool) -> bytes | None:
    if not path.is_absolute():
        report.findings.append(Finding(key, f"{path} is a relative path: the service runs from /",
                                       "give the absolute path (patrol-agent provision writes them)"))
    elif not as_service and str(path).startswith(HIDDEN) and UNIT.exists():
        report.findings.append(Finding(key, f"{path} is hidden from the service by its sandbox "
                                            "(ProtectHome, PrivateTmp)", "keep it under /etc/patrol-agent",
                                       warning=True))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang the check
        with os.fdopen(fd, "rb") as src:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                report.findings.append(Finding(key, f"{path} is not a regular file (a FIFO, a device, a "
                                                    "directory?)", "point it at the PEM file itself"))
                return None
            data = src.read(MAX_PEM_BYTES)
    except FileNotFoundError:
        report.findings.append(Finding(key, f"{path} does not exist", "patrol-agent provision --ca/--cert/--key"))
        return None
    except OSError as exc:
        report.findings.append(Finding(key, f"{path}: cannot read: {exc.strerror or exc}"))
        return None
    if not as_service:
        reason = _service_cannot_read(path, _service_account())
        if reason:
            report.findings.append(Finding(key, f"{path}: {reason}",
                                           f"chown root:{SERVICE} {path}; chmod g+r {path}"))
    return data


def _key_mode(path: Path, report: TlsReport) -> None:
    key = "mqtt.tls.key_file"
    try:
        st = path.stat()
    except OSError:
        return
    mode = stat.S_IMODE(st.st_mode)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    fix = f"chmod 0640 {path}; chown root:{SERVICE} {path} (or chmod 0600)"
    if mode & 0o004:
        report.findings.append(Finding(key, f"{path} is readable by others ({mode:04o})", fix))
    elif mode & 0o022:
        report.findings.append(Finding(key, f"{path} is writable by {'others' if mode & 0o002 else 'its group'} "
                                            f"({mode:04o})", fix))
    elif mode & 0o040 and group not in (SERVICE, "root") and st.st_gid != os.getegid():
        report.findings.append(Finding(key, f"{path} is readable by group {group} ({mode:04o})", fix))
    report.facts["key"] = f"{path} {mode:04o}, group {group}"


def check_tls(tls: TlsConfig, vehicle_id: str | None, *, now: datetime | None = None,
              clock_synced: bool | None = None, as_service: bool = False) -> TlsReport:
    """The CA, the client certificate and its key. ``as_service``: this process is the service (``run``):
    what it can read is the truth, no guesses about the service account or its sandbox."""
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = now or datetime.now(UTC)
    report = TlsReport()
    cas: list[x509.Certificate] = []
    if tls.ca_file is not None and (pem := _read("mqtt.tls.ca_file", tls.ca_file, report, as_service)) is not None:
        try:
            cas = x509.load_pem_x509_certificates(pem)
        except ValueError:
            report.findings.append(Finding("mqtt.tls.ca_file", f"{tls.ca_file}: no PEM certificate in it"))
        for ca in cas:
            if ca.not_valid_after_utc < now:
                report.findings.append(Finding("mqtt.tls.ca_file", f"{tls.ca_file}: the CA certificate expired on "
                                                                   f"{ca.not_valid_after_utc:%Y-%m-%d}"))
        if cas:
            report.facts["ca"] = f"{tls.ca_file}: {len(cas)} certificate(s), {cas[0].subject.rfc4514_string()}"
    cert = None
    key = "mqtt.tls.cert_file"
    if tls.cert_file is not None and (pem := _read(key, tls.cert_file, report, as_service)) is not None:
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            report.findings.append(Finding(key, f"not a PEM certificate: {tls.cert_file}"))
    if cert is not None:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else None
        until = cert.not_valid_after_utc
        if until < now:
            report.findings.append(Finding(key, f"expired on {until:%Y-%m-%d %H:%M} UTC",
                                           "ask the fleet PKI for a new one"))
        elif until - now < EXPIRY_WARNING:
            report.findings.append(Finding(key, f"expires on {until:%Y-%m-%d}", "renew it soon",
                                           warning=True))
        if cert.not_valid_before_utc > now:
            unsure = clock_synced is not True
            report.findings.append(Finding(
                key, f"not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
                + (" (the system clock is not synchronised yet)" if unsure else ""),
                "check the clock (timedatectl)", warning=unsure))
        if vehicle_id is not None and cn != vehicle_id:
            report.findings.append(Finding(key, f"issued to {cn!r}, but this vehicle is {vehicle_id!r}",
                                           "install this vehicle's own certificate"))
        with contextlib.suppress(x509.ExtensionNotFound):
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
                report.findings.append(Finding(key, "not a client certificate (no clientAuth usage): "
                                                    "the broker refuses it"))
        if cas and not any(_issued_by(cert, ca) for ca in cas):
            report.findings.append(Finding(key, f"not signed by the CA in {tls.ca_file}",
                                           "another CA? the broker refuses it"))
        report.facts["cert"] = f"CN={cn}, valid until {until:%Y-%m-%d}"
    key = "mqtt.tls.key_file"
    if tls.key_file is not None and (pem := _read(key, tls.key_file, report, as_service)) is not None:
        _key_mode(tls.key_file, report)
        try:
            private = serialization.load_pem_private_key(pem, None)
        except TypeError:
            report.findings.append(Finding(key, f"{tls.key_file} is encrypted: the service cannot unlock it",
                                           "install it without a passphrase (0640 root:patrol-agent)"))
        except (ValueError, UnsupportedAlgorithm) as exc:
            report.findings.append(Finding(key, f"{tls.key_file}: not a PEM private key ({str(exc)[:80]})"))
        else:
            raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            if cert is not None and private.public_key().public_bytes(*raw) != cert.public_key().public_bytes(*raw):
                report.findings.append(Finding(key, f"{tls.key_file} is not the key of {tls.cert_file}",
                                               "install the key that goes with this certificate"))
    return report


def _issued_by(cert: Any, ca: Any) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except Exception:  # ValueError (another issuer), TypeError (key type), InvalidSignature
        return False
    return True


def _tls_in_child(tls: TlsConfig, vehicle_id: str | None, clock_synced: bool | None) -> TlsReport:
    """:func:`check_tls` in a forked child, so that this process never imports cryptography; in-process
    where a fork would not be safe (other threads) or fails."""
    if threading.active_count() > 1 or not hasattr(os, "fork"):
        return check_tls(tls, vehicle_id, clock_synced=clock_synced, as_service=True)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        code = 1
        try:
            os.close(read_end)
            found = check_tls(tls, vehicle_id, clock_synced=clock_synced, as_service=True)
            with os.fdopen(write_end, "w") as out:
                json.dump({"findings": [asdict(f) for f in found.findings], "facts": found.facts}, out)
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as src:
        ready = select.select([src], [], [], 20)[0]
        text = src.read() if ready else ""
    with contextlib.suppress(OSError):
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    if not ready:
        return TlsReport([Finding("mqtt.tls", "reading the TLS files did not finish in 20 s",
                                  "check that ca_file, cert_file and key_file are plain files on a local disk")], {})
    try:
        data = json.loads(text)
        return TlsReport([Finding(**f) for f in data["findings"]], dict(data["facts"]))
    except (ValueError, KeyError, TypeError):
        return check_tls(tls, vehicle_id, clock_synced=clock_synced, as_service=True)


# --- the config --------------------------------------------------------------------


def _pieces(loaded: Loaded) -> tuple[str | None, list[str] | None, TlsConfig | None, bool]:
    """(vehicle id, brokers, tls, lab mode), from the config, or as far as they validate in a config
    that does not (so that `config check` reports every problem at once)."""
    if loaded.cfg is not None:
        cfg = loaded.cfg
        return cfg.vehicle.id, list(cfg.mqtt.brokers), cfg.mqtt.tls, cfg.mqtt.lab_mode
    data = loaded.data or {}
    vehicle: dict[str, Any] = data["vehicle"] if isinstance(data.get("vehicle"), dict) else {}
    mqtt: dict[str, Any] = data["mqtt"] if isinstance(data.get("mqtt"), dict) else {}
    vehicle_id = vehicle.get("id") if isinstance(vehicle.get("id"), str) else None
    brokers: list[str] | None = None
    tls: TlsConfig | None = None
    with contextlib.suppress(ValidationError):
        brokers = TypeAdapter(list[BrokerUrl]).validate_python(mqtt.get("brokers"))
    with contextlib.suppress(ValidationError):
        tls = TlsConfig.model_validate(mqtt.get("tls") or {})
    return vehicle_id, brokers, tls, mqtt.get("lab_mode") is True


def findings(loaded: Loaded, *, now: datetime | None = None, clock_synced: bool | None = None,
             as_service: bool = False) -> list[Finding]:
    vehicle_id, brokers, tls, _lab = _pieces(loaded)
    found: list[Finding] = []
    mqtt = (loaded.data or {}).get("mqtt")
    if isinstance(mqtt, dict) and mqtt.get("password") is not None and ("mqtt", "password") not in loaded.env:
        with contextlib.suppress(OSError):
            mode = stat.S_IMODE(loaded.path.stat().st_mode)
            if mode & 0o004:
                found.append(Finding("mqtt.password", f"{loaded.path} holds a password and is readable by others "
                                                      f"({mode:04o})", f"chmod 0640 {loaded.path}, or use "
                                                                       "mqtt.password_file"))
    for url in brokers or []:
        if urlsplit(url).scheme != "mqtts":
            found.append(Finding("mqtt.brokers", f"{url} is plain TCP: positions and alerts would travel "
                                                 "unencrypted", "use mqtts://"))
    if tls is None or not any(urlsplit(url).scheme == "mqtts" for url in brokers or []):
        return found
    if tls.ca_file is None:
        found.append(Finding("mqtt.tls.ca_file", "not set: the broker must be verified against the fleet's own CA"))
    if tls.cert_file is None:
        found.append(Finding("mqtt.tls.cert_file", "not set: this vehicle needs its own client certificate"))
    if tls.key_file is None:
        found.append(Finding("mqtt.tls.key_file", "not set: this vehicle needs its own client certificate's key"))
    if as_service:
        found += _tls_in_child(tls, vehicle_id, clock_synced).findings
    else:
        found += check_tls(tls, vehicle_id, now=now, clock_synced=clock_synced).findings
    return found


def _loc(key: str) -> tuple[str | int, ...]:
    return tuple(key.split("."))


def check(path: Path, environ: Mapping[str, str] | None = None, *, now: datetime | None = None,
          clock_synced: bool | None = None, as_service: bool = False) -> Checked:
    """Everything ``run`` refuses, with where it comes from. ``as_service`` for ``run`` itself."""
    if clock_synced is None:
        from agent.clock import system_clock_synced

        clock_synced = system_clock_synced()
    loaded = parse(path, environ)
    problems = list(loaded.problems)
    warnings: list[str] = []
    lab = _pieces(loaded)[3]
    lab_from = loaded.where(("mqtt", "lab_mode"))
    for finding in findings(loaded, now=now, clock_synced=clock_synced, as_service=as_service):
        line = f"{loaded.where(_loc(finding.key))}: {finding.key}: {finding.text}"
        if finding.warning:
            warnings.append(line)
        elif lab:
            warnings.append(f"LAB MODE (mqtt.lab_mode: true at {lab_from}): {line}")
        else:
            problems.append(line)
    if loaded.cfg is not None and loaded.cfg.simulation:
        warnings.append(f"{loaded.where(('simulation',))}: simulation: true: the inputs are mock pins, no real "
                        "panic button can raise an alarm")
    if loaded.cfg is not None and loaded.cfg.allow_env_security_overrides:
        warnings.append(f"{loaded.where((ALLOW_ENV_SECURITY,))}: {ALLOW_ENV_SECURITY}: the environment may change "
                        "brokers, TLS files, lab mode and simulation")
    problems.sort(key=lambda text: _line_of(text, loaded.path))
    return Checked(loaded.cfg if not loaded.problems else None, problems, warnings, loaded.overrides, loaded)


def _line_of(problem: str, path: Path) -> tuple[int, int]:
    """Problems of the file in line order, then those from the environment."""
    rest = problem.removeprefix(f"{path}:")
    if rest == problem:
        return (1, 0)
    digits = rest.split(":", 1)[0]
    return (0, int(digits)) if digits.isdigit() else (0, 0)
