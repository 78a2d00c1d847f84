"""``patrol-agent doctor``: is this unit fit for duty? Each check PASS / WARN / FAIL with a hint.

Runs in the CLI process, as the technician fitting the unit. It reads the
config, the receiver (with baud-rate detection), the GPIO chip, and walks to
the broker step by step (DNS, TCP, TLS, MQTT authentication) so that
"certificate expired" is told apart from "connection refused". When the
daemon is running it holds the serial port and the GPIO lines: their state
is then asked of the daemon through its control socket. Another process
holding the port (gpsd, ModemManager) is found in /proc and named.

Long steps report what they do through ``progress`` (the baud-rate scan
takes up to 13 s); each check is handed to ``on_check`` as soon as it is
made, so the technician sees the report grow.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.checks import FAIL, PASS, WARN, Check, Progress, Report, silent
from agent.clock import system_clock_synced
from agent.config import AgentConfig, load
from agent.doctor_hw import check_gnss, check_gpio, check_modes
from agent.errors import ConfigError
from agent.link_policy import Broker, tls_context

__all__ = ["FAIL", "PASS", "WARN", "Check", "Report", "run"]


# --- config and files -----------------------------------------------------------


def check_files(report: Report, config_path: Path, cfg: AgentConfig) -> None:
    mode = stat.S_IMODE(config_path.stat().st_mode)
    if mode & 0o002:
        report.add("config permissions", FAIL, f"{config_path} is world-writable ({mode:04o})",
                   f"chmod 0640 {config_path}")
    elif mode & 0o004 and cfg.mqtt.password is not None:
        report.add("config permissions", FAIL, f"{config_path} holds a password and is world-readable ({mode:04o})",
                   f"chmod 0640 {config_path}; chown root:patrol-agent {config_path}")
    else:
        report.add("config permissions", PASS, f"{config_path} {mode:04o}")
    check_tls_files(report, cfg)


def check_tls_files(report: Report, cfg: AgentConfig) -> None:
    """The CA, the client certificate and the key, by the same check `run` makes (agent.security)."""
    from agent.security import check_tls

    tls = cfg.mqtt.tls
    found = check_tls(tls, cfg.vehicle.id, clock_synced=system_clock_synced())
    for label, key, fact in (("CA file", "ca_file", "ca"), ("client certificate", "cert_file", "cert"),
                             ("private key", "key_file", "key")):
        path = getattr(tls, key)
        if path is None:
            continue
        items = found.of(f"mqtt.tls.{key}")
        errors = [f for f in items if not f.warning]
        shown = errors or items
        if shown:
            report.add(label, FAIL if errors else WARN, "; ".join(f.message for f in shown),
                       next((f.hint for f in shown if f.hint), ""))
        else:
            report.add(label, PASS, found.facts.get(fact, str(path)))


# --- the broker, step by step ----------------------------------------------------------


def _connect_packet(client_id: str, username: str | None, password: str | None, keepalive: int = 10) -> bytes:
    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("!H", len(raw)) + raw

    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = text("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + text(client_id)
    if username:
        body += text(username)
    if password:
        body += text(password)
    length = b""
    n = len(body)
    while True:
        byte, n = n % 128, n // 128
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return b"\x10" + length + body


CONNACK = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
           4: "bad user name or password", 5: "not authorized"}


def check_broker(report: Report, cfg: AgentConfig, url: str, timeout: float = 5.0) -> None:
    broker = Broker.parse(url)
    name = f"broker {broker.host}:{broker.port}"
    report.progress(f"{name}: resolving, connecting, TLS, MQTT (up to {timeout:g} s each)")
    try:
        addresses = socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        report.add(f"{name} DNS", FAIL, f"cannot resolve {broker.host}: {exc.strerror}", "check the name and DNS")
        return
    report.add(f"{name} DNS", PASS, f"{broker.host} -> {addresses[0][4][0]}")
    try:
        sock: Any = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except ConnectionRefusedError:
        report.add(f"{name} TCP", FAIL, "connection refused", "broker down, or wrong port")
        return
    except OSError as exc:
        report.add(f"{name} TCP", FAIL, f"no connection: {exc.strerror or exc}", "no route: APN, firewall, SIM?")
        return
    report.add(f"{name} TCP", PASS, "connected")
    try:
        if broker.tls:
            try:
                sock = tls_context(cfg.mqtt).wrap_socket(sock, server_hostname=broker.host)
            except ssl.SSLCertVerificationError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: the broker's certificate is not trusted: "
                           f"{exc.verify_message}", "wrong CA file (mqtt.tls.ca_file), or wrong broker name")
                return
            except ssl.SSLError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: {_tls_reason(exc)}", _tls_hint(exc))
                return
            except OSError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: {exc}", "is this a TLS port?")
                return
            report.add(f"{name} TLS", PASS, f"{sock.version()}, broker certificate verified")
        elif cfg.mqtt.lab_mode:
            report.add(f"{name} TLS", WARN, "plain TCP (lab mode)", "never in a vehicle: use mqtts://")
        else:
            report.add(f"{name} TLS", FAIL, "plain TCP", "use mqtts:// (or lab_mode for a lab)")
        password = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
        client_id = f"{cfg.mqtt.client_id or 'patrol-' + cfg.vehicle.id}-doctor"
        try:
            if broker.tls:  # TLS 1.3: a refused client certificate comes as an alert after the handshake; read
                sock.settimeout(0.5)  # it before writing, or the broker's reset can swallow it
                with contextlib.suppress(TimeoutError):
                    sock.recv(1)
            sock.settimeout(timeout)
            sock.sendall(_connect_packet(client_id, cfg.mqtt.username, password))
            reply = sock.recv(4)
        except ssl.SSLError as exc:
            report.add(f"{name} MQTT", FAIL, f"the broker refused our certificate: {_tls_reason(exc)}", _tls_hint(exc))
            return
        except OSError as exc:
            report.add(f"{name} MQTT", FAIL, f"no answer to CONNECT: {exc}", "broker overloaded, or not MQTT")
            return
        if len(reply) < 4 or reply[0] != 0x20:
            report.add(f"{name} MQTT", FAIL, "the broker closed the connection on CONNECT",
                       "certificate or client id refused: see the broker's log")
        elif reply[3] != 0:
            report.add(f"{name} MQTT", FAIL, f"authentication failed: {CONNACK.get(reply[3], reply[3])}",
                       "check the certificate's CN / user name and the broker's ACL")
        else:
            report.add(f"{name} MQTT", PASS, "authenticated (CONNACK accepted)")
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    finally:
        sock.close()


def _tls_reason(exc: ssl.SSLError) -> str:
    text = str(exc.reason or exc).lower().replace("_", " ")
    for marker in ("sslv3 alert ", "tlsv13 alert ", "tlsv1 alert "):
        if marker in text:
            return text.split(marker, 1)[1]
    return text


def _tls_hint(exc: ssl.SSLError) -> str:
    reason = _tls_reason(exc)
    if "expired" in reason:
        return "the client certificate has expired: install a renewed one"
    if "certificate required" in reason:
        return "the broker wants a client certificate: set mqtt.tls.cert_file and key_file"
    if any(word in reason for word in ("unknown ca", "bad certificate", "decrypt error", "unsupported certificate")):
        return ("the broker does not trust this vehicle's certificate: certificate from another CA? "
                "(it must be issued by the fleet CA the broker uses)")
    if "revoked" in reason:
        return "this vehicle's certificate has been revoked"
    return "see the broker's log"


# --- the rest -----------------------------------------------------------------------


def check_clock(report: Report) -> None:
    synced = system_clock_synced()
    if synced is None:
        report.add("clock", WARN, "cannot ask the kernel", "")
    elif synced:
        report.add("clock", PASS, "synchronised")
    else:
        report.add("clock", WARN, "not synchronised", "no NTP yet: messages use GNSS time once there is a fix")


def check_disk(report: Report, cfg: AgentConfig) -> None:
    path = cfg.state_dir if cfg.state_dir.exists() else cfg.state_dir.parent
    try:
        vfs = os.statvfs(path)
    except OSError as exc:
        report.add("disk", FAIL, f"{path}: {exc.strerror}")
        return
    free = vfs.f_bavail * vfs.f_frsize
    need = cfg.outbox.max_bytes * 2
    result = PASS if free >= need else (WARN if free >= cfg.outbox.max_bytes // 4 else FAIL)
    detail = f"{free / 1e6:,.0f} MB free for the outbox (bounded at {cfg.outbox.max_bytes / 1e6:g} MB)"
    report.add("disk", result, detail, "" if result == PASS else "free space on the SD card")


def check_service(report: Report, daemon: Callable[[], dict[str, Any] | None]) -> None:
    status = daemon()
    if status is not None:
        report.add("service", PASS, f"running: {status.get('status_line', '')}")
        return
    import shutil
    import subprocess

    if shutil.which("systemctl") and Path("/run/systemd/system").exists():
        state = subprocess.run(["systemctl", "is-active", "patrol-agent"], capture_output=True, text=True).stdout
        report.add("service", WARN, f"not answering (systemd says {state.strip() or 'unknown'})",
                   "journalctl -u patrol-agent -e")
    else:
        report.add("service", WARN, "not running", "systemctl start patrol-agent")


def run(config_path: Path, *, serial_seconds: float = 2.5, progress: Progress | None = None,
        on_check: Callable[[Check], None] | None = None, gpio_select: Callable[..., Any] | None = None) -> Report:
    report = Report(on_check=on_check, progress=progress or silent)
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        report.add("config", FAIL, "; ".join(exc.problems), f"patrol-agent config check {config_path}")
        return report
    report.add("config", PASS, f"{config_path}: vehicle {cfg.vehicle.id}")
    check_files(report, config_path, cfg)

    def daemon() -> dict[str, Any] | None:
        from agent.control import request

        try:
            reply = list(request(cfg.runtime_dir, "status", timeout=2))
        except OSError:
            return None
        return reply[-1].get("status") if reply else None

    check_modes(report, cfg)
    check_gnss(report, cfg, daemon, serial_seconds)
    check_gpio(report, cfg, daemon, gpio_select)
    for url in cfg.mqtt.brokers:
        check_broker(report, cfg, url)
    check_clock(report)
    check_disk(report, cfg)
    check_service(report, daemon)
    report.progress("")
    return report
