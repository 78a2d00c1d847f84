"""doctor's broker step: DNS, TCP, TLS and MQTT, without ever harming the vehicle's session.

Runs in the CLI process, under ``patrol-agent doctor`` (see agent/doctor.py).

Every connection doctor could make with the vehicle's certificate *is* the
vehicle: the reference broker binds the client id to the certificate's CN,
so a CONNECT of doctor's would close the running daemon's connection, and a
clean session would discard what dispatch queued for the vehicle while it
was away (acknowledgements, commands). So:

- when the daemon answers its control socket, the link is taken from it:
  connected to which broker, over which MQTT version, for how long, its last
  error and its link faults. For a broker it is not connected to, DNS, TCP
  and TLS are checked (no MQTT session is made by them), the MQTT step is
  reported from the daemon;
- when the daemon cannot be asked but may be running (permission denied, no
  answer), doctor does not send CONNECT at all;
- only when the daemon is not running does doctor send CONNECT itself: with
  the vehicle's own client id and clean session OFF (MQTT 5: clean start off
  and the daemon's session expiry), never acknowledging what the broker may
  deliver from the session, and a normal DISCONNECT: the session, its
  subscriptions and its queued messages are left as they were (QoS 1
  messages not acknowledged are delivered again to the daemon). A separate
  "-doctor" client id would not help: the reference broker replaces it by
  the CN, and on other brokers a persistent session of its own would be
  left behind for ever (MQTT 3.1.1 sessions do not expire).

The MQTT version is tried as the daemon does (``mqtt.protocol``; ``auto``:
5, then 3.1.1 for a broker that refuses 5) and the one in use is shown.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import Any

from agent.checks import FAIL, PASS, WARN, Report
from agent.config import AgentConfig
from agent.link_policy import SESSION_EXPIRY_S, Broker, tls_context

LINK_FAULTS = ("protocol_refused", "broker_refused", "session_taken_over", "link_setup_failed",
               "subscription_refused")
CONNACK_V4 = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
              4: "bad user name or password", 5: "not authorized"}
CONNACK_V5 = {0x80: "unspecified error", 0x81: "malformed packet", 0x82: "protocol error",
              0x83: "implementation specific error", 0x84: "unsupported protocol version",
              0x85: "client id not valid", 0x86: "bad user name or password", 0x87: "not authorized",
              0x88: "server unavailable", 0x89: "server busy", 0x8A: "banned", 0x8C: "bad authentication method",
              0x90: "topic name invalid", 0x95: "packet too large", 0x97: "quota exceeded",
              0x9C: "use another server", 0x9D: "server moved", 0x9F: "connection rate exceeded"}


# --- is the daemon there? ----------------------------------------------------------------


def ask_daemon(cfg: AgentConfig) -> tuple[dict[str, Any] | None, str | None]:
    """(its status, None) when it runs; (None, None) when it does not; (None, why) when it cannot be asked
    (it may be running: permission denied on its socket, no answer)."""
    from agent.control import request

    try:
        reply = list(request(cfg.runtime_dir, "status", timeout=3))
    except (FileNotFoundError, ConnectionRefusedError):
        return None, None
    except PermissionError:
        return None, "permission denied on its control socket"
    except (OSError, ValueError) as exc:
        return None, str(exc) or type(exc).__name__
    status = reply[-1].get("status") if reply else None
    return (status, None) if isinstance(status, dict) else (None, "no status in its answer")


def check_link(report: Report, cfg: AgentConfig, timeout: float = 5.0) -> None:
    """Every configured broker, without harming the vehicle's session (see the module's docstring)."""
    status, unreachable = ask_daemon(cfg)
    if "." in cfg.vehicle.id:
        report.add("topics", WARN, f"the vehicle id {cfg.vehicle.id} has a '.': NATS refuses such MQTT topics "
                   "and RabbitMQ delivers them with '/' in its place (mosquitto takes them)",
                   "a vehicle id without '.' if dispatch runs NATS or RabbitMQ")
    for url in cfg.mqtt.brokers:
        if status is not None:
            from_daemon(report, cfg, url, status, timeout)
        elif unreachable is None:
            check_broker(report, cfg, url, timeout)
        else:
            broker = Broker.parse(url)
            report.add(f"broker {broker.host}:{broker.port} MQTT", WARN, (
                f"not checked: the agent may be running but cannot be asked ({unreachable}); doctor does not "
                "connect as the vehicle then (it would take over its session)"),
                "run doctor as root or as a member of the patrol-agent group")


def from_daemon(report: Report, cfg: AgentConfig, url: str, status: dict[str, Any], timeout: float) -> None:
    broker = Broker.parse(url)
    name = f"broker {broker.host}:{broker.port}"
    link: dict[str, Any] = status.get("link") or {}
    faults: dict[str, str] = status.get("faults_detail") or {}
    link_faults = [f"{code}: {faults[code]}" for code in LINK_FAULTS if code in faults]
    active = link.get("broker") if link.get("connected") else None
    if active == broker.display:
        detail = (f"connected over MQTT {link.get('protocol')} for {_duration(link.get('connected_for_s'))}, "
                  f"{link.get('reconnects')} reconnects (the running agent's link: doctor does not connect "
                  "while it runs, it would take over the vehicle's session)")
        if link_faults:
            report.add(f"{name} MQTT", FAIL, f"{detail}; " + "; ".join(link_faults), "see the broker's ACL")
        else:
            report.add(f"{name} MQTT", PASS, detail)
        return
    if not _transport(report, cfg, broker, name, timeout, keep=False):
        return
    if active is not None:
        report.add(f"{name} MQTT", WARN, f"standby broker, MQTT not checked: the running agent is connected to "
                   f"{active} over MQTT {link.get('protocol')} (a CONNECT here would take over its session)",
                   "to check it: systemctl stop patrol-agent; patrol-agent doctor; systemctl start patrol-agent")
        return
    why = link.get("last_error") or "connecting"
    report.add(f"{name} MQTT", FAIL, "the running agent is not connected: " + "; ".join([str(why), *link_faults]),
               "journalctl -u patrol-agent -e")


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# --- doctor's own connection (the daemon is not running) ----------------------------------


def check_broker(report: Report, cfg: AgentConfig, url: str, timeout: float = 5.0) -> None:
    broker = Broker.parse(url)
    name = f"broker {broker.host}:{broker.port}"
    sock = _transport(report, cfg, broker, name, timeout, keep=True)
    if not sock:
        return
    versions = ["5", "3.1.1"] if cfg.mqtt.protocol == "auto" else [cfg.mqtt.protocol]
    refusals: list[str] = []
    for version in versions:
        if sock is None:
            sock = _open(cfg, broker, timeout)
        try:
            verdict, detail, hint = _mqtt(sock, cfg, broker, version, timeout)
        except OSError as exc:
            verdict, detail, hint = "error", f"cannot reach it again: {exc}", "an unstable link? try again"
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            sock = None
        if verdict == "ok":
            why = f", as the agent will (it refuses MQTT 5: {refusals[0]})" if refusals else " (CONNACK accepted)"
            report.add(f"{name} MQTT", PASS, f"authenticated over MQTT {version}{why}; the vehicle's session "
                       "left as it was")
            return
        if verdict != "version":
            report.add(f"{name} MQTT", FAIL, detail, hint)
            return
        refusals.append(detail)
    hint = "set mqtt.protocol: auto" if cfg.mqtt.protocol != "auto" else "is this an MQTT broker? see its log"
    report.add(f"{name} MQTT", FAIL, f"the broker refuses MQTT {' and '.join(versions)}: {'; '.join(refusals)}", hint)


def _open(cfg: AgentConfig, broker: Broker, timeout: float) -> Any:
    sock: Any = socket.create_connection((broker.host, broker.port), timeout=timeout)
    if broker.tls:
        sock = tls_context(cfg.mqtt).wrap_socket(sock, server_hostname=broker.host)
    return sock


def _mqtt(sock: Any, cfg: AgentConfig, broker: Broker, version: str, timeout: float) -> tuple[str, str, str]:
    """One CONNECT: ("ok" | "version" | "refused", what happened, a hint)."""
    password = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
    try:
        if broker.tls:  # TLS 1.3: a refused client certificate comes as an alert after the handshake; read
            sock.settimeout(0.5)  # it before writing, or the broker's reset can swallow it
            with contextlib.suppress(TimeoutError):
                sock.recv(1)
        sock.settimeout(timeout)
        sock.sendall(connect_packet(cfg.mqtt.client_id or cfg.vehicle.id, cfg.mqtt.username, password, version))
        reply = _read_packet(sock)
    except ssl.SSLError as exc:
        return "refused", f"the broker refused our certificate: {tls_reason(exc)}", tls_hint(exc)
    except OSError as exc:
        return "refused", f"no answer to CONNECT: {exc}", "broker overloaded, or not MQTT"
    if reply is None or reply[0] != 0x20 or len(reply[1]) < 2:
        if version == "5":
            return "version", "closed the connection on the MQTT 5 CONNECT without answering", ""
        return ("refused", "the broker closed the connection on CONNECT",
                "certificate or client id refused: see the broker's log")
    code = reply[1][1]
    if code == 0:
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT, normal: the session and its expiry stay as they are
        return "ok", "", ""
    text = (CONNACK_V5 if version == "5" and code >= 0x80 else CONNACK_V4).get(code, f"code {code}")
    if code in (1, 0x84):
        return "version", f"CONNACK {text}", ""
    return "refused", f"authentication failed: {text}", "check the certificate's CN / user name and the broker's ACL"


def _read_packet(sock: Any) -> tuple[int, bytes] | None:
    """One MQTT packet (type byte, body), or None if the connection closed first."""
    head = sock.recv(1)
    if not head:
        return None
    length, shift = 0, 0
    for _ in range(4):
        byte = sock.recv(1)
        if not byte:
            return None
        length |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            break
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            return None
        body += chunk
    return head[0], body


def connect_packet(client_id: str, username: str | None, password: str | None, version: str,
                   keepalive: int = 10) -> bytes:
    """CONNECT with clean session / clean start OFF, no will; MQTT 5 with the daemon's session expiry."""
    def text(value: str) -> bytes:
        raw = value.encode()
        return struct.pack("!H", len(raw)) + raw

    flags = (0x80 if username else 0) | (0x40 if password else 0)
    v5 = version == "5"
    header = text("MQTT") + bytes([5 if v5 else 4, flags]) + struct.pack("!H", keepalive)
    if v5:
        header += _varint(5) + b"\x11" + struct.pack("!I", SESSION_EXPIRY_S)  # Session Expiry Interval
    body = header + text(client_id)
    if username:
        body += text(username)
    if password:
        body += text(password)
    return b"\x10" + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = b""
    while True:
        n, byte = divmod(n, 128)
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


# --- DNS, TCP, TLS ----------------------------------------------------------------------


def _transport(report: Report, cfg: AgentConfig, broker: Broker, name: str, timeout: float, *, keep: bool) -> Any:
    """DNS, TCP and TLS, each reported; the open socket if ``keep`` (else closed, and True), or None."""
    report.progress(f"{name}: resolving, connecting, TLS, MQTT (up to {timeout:g} s each)")
    try:
        addresses = socket.getaddrinfo(broker.host, broker.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        report.add(f"{name} DNS", FAIL, f"cannot resolve {broker.host}: {exc.strerror}", "check the name and DNS")
        return None
    report.add(f"{name} DNS", PASS, f"{broker.host} -> {addresses[0][4][0]}")
    try:
        sock: Any = socket.create_connection((broker.host, broker.port), timeout=timeout)
    except ConnectionRefusedError:
        report.add(f"{name} TCP", FAIL, "connection refused", "broker down, or wrong port")
        return None
    except OSError as exc:
        report.add(f"{name} TCP", FAIL, f"no connection: {exc.strerror or exc}", "no route: APN, firewall, SIM?")
        return None
    report.add(f"{name} TCP", PASS, "connected")
    try:
        if broker.tls:
            try:
                sock = tls_context(cfg.mqtt).wrap_socket(sock, server_hostname=broker.host)
            except ssl.SSLCertVerificationError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: the broker's certificate is not trusted: "
                           f"{exc.verify_message}", "wrong CA file (mqtt.tls.ca_file), or wrong broker name")
                return None
            except ssl.SSLError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: {tls_reason(exc)}", tls_hint(exc))
                return None
            except OSError as exc:
                report.add(f"{name} TLS", FAIL, f"TLS handshake failed: {exc}", "is this a TLS port?")
                return None
            report.add(f"{name} TLS", PASS, f"{sock.version()}, broker certificate verified")
        elif cfg.mqtt.lab_mode:
            report.add(f"{name} TLS", WARN, "plain TCP (lab mode)", "never in a vehicle: use mqtts://")
        else:
            report.add(f"{name} TLS", FAIL, "plain TCP", "use mqtts:// (or lab_mode for a lab)")
    except BaseException:
        sock.close()
        raise
    if keep:
        return sock
    sock.close()
    return True


def tls_reason(exc: ssl.SSLError) -> str:
    text = str(exc.reason or exc).lower().replace("_", " ")
    for marker in ("sslv3 alert ", "tlsv13 alert ", "tlsv1 alert "):
        if marker in text:
            return text.split(marker, 1)[1]
    return text


def tls_hint(exc: ssl.SSLError) -> str:
    reason = tls_reason(exc)
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
