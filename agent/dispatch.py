"""Dispatch-side tools: watch what vehicles send, acknowledge and clear alerts.

``patrol-agent watch`` and ``patrol-agent dispatch ack|clear`` run in the CLI
process with a paho client of their own (paho's loop thread runs the
callbacks; they only print or put on a queue). They are an example for
dispatch integrators and the demo's and tests' dispatcher; the real dispatch
centre builds on ``docs/mqtt-api.md``.

Each run has a client id of its own (``patrol-watch-<random>``,
``patrol-dispatch-<random>``) so that two tools never take each other's
session; ``watch`` subscribes again on every connect, so a broker restart
only costs the messages sent while it was down. ``dispatch ack|clear`` sends
``ack_alert`` / ``clear_alert`` on the vehicle's ``cmd`` topic and waits for
its answer on ``reply``. Ordinary errors (bad URL, missing file, refused
connection, TLS failure) are :class:`DispatchError`: one line and an exit
code, never a traceback. Passwords come from a file or the environment,
never from the command line.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.daemon_client import ToolError

PASSWORD_ENV = "PATROL_DISPATCH_PASSWORD"  # noqa: S105 - the variable's name, not a password
FAILED, USAGE, NO_ANSWER = 1, 2, 3


class DispatchError(ToolError):
    """An ordinary failure: ``str()`` is the line to print, ``code`` the exit code."""


@dataclass(frozen=True)
class BrokerOptions:
    url: str = "mqtt://127.0.0.1:1883"
    prefix: str = "patrol"
    client_id: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password_file: str | None = None

    @classmethod
    def from_args(cls, args: Any) -> BrokerOptions:
        return cls(url=args.broker, prefix=args.prefix, client_id=args.client_id, ca=args.ca, cert=args.cert,
                   key=args.key, username=args.username, password_file=args.password_file)

    def password(self, environ: dict[str, str] | None = None) -> str | None:
        env = os.environ if environ is None else environ
        if self.password_file:
            try:
                return Path(self.password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise DispatchError(f"--password-file {self.password_file}: {exc.strerror or exc}", USAGE) from None
        return env.get(PASSWORD_ENV) or None


def new_client_id(tool: str) -> str:
    """A client id of this tool and this run (23 characters at most, as MQTT 3.1.1 guarantees)."""
    return f"patrol-{tool[:8]}-{secrets.token_hex(3)}"


def _endpoint(url: str) -> tuple[str, int, bool]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise DispatchError(f"bad broker URL {url!r}: {exc}", USAGE) from None
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise DispatchError(f"bad broker URL {url!r}: expected mqtts://host:8883 (or mqtt://host:1883)", USAGE)
    if parts.username is not None or parts.password is not None:
        raise DispatchError("credentials in the broker URL are refused: use --username and --password-file "
                            f"(or {PASSWORD_ENV})", USAGE)
    tls = parts.scheme == "mqtts"
    return parts.hostname, port or (8883 if tls else 1883), tls


def _tls_context(opts: BrokerOptions) -> ssl.SSLContext:
    for label, path in (("--ca", opts.ca), ("--cert", opts.cert), ("--key", opts.key)):
        if path is not None and not os.path.exists(path):
            raise DispatchError(f"{label} {path}: no such file", USAGE)
    try:
        ctx = ssl.create_default_context(cafile=opts.ca)
        if opts.cert:
            ctx.load_cert_chain(opts.cert, opts.key)
    except (ssl.SSLError, OSError) as exc:
        raise DispatchError(f"cannot load the TLS files: {getattr(exc, 'reason', None) or exc}", USAGE) from None
    return ctx


class Link:
    """A paho client that connects (or fails with one line) and tells its subscriber about every connect."""

    def __init__(self, opts: BrokerOptions, tool: str, *, log: IO[str] | None = None) -> None:
        self.opts = opts
        self.host, self.port, tls = _endpoint(opts.url)
        self.client_id = opts.client_id or new_client_id(tool)
        self.log = log
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        if tls:
            self.client.tls_set_context(_tls_context(opts))
        password = opts.password()
        if opts.username or password:
            self.client.username_pw_set(opts.username, password)
        self.client.reconnect_delay_set(1, 8)
        self.subscriptions: list[str] = []
        self._connected = threading.Event()
        self._refused: str | None = None
        self._ever = False
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def _say(self, text: str) -> None:
        if self.log is not None:
            print(text, file=self.log, flush=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            self._refused = str(rc)
            self._say(f"--- the broker refused the connection: {rc}")
            return
        for topic in self.subscriptions:  # a clean session: subscribe again on every connect
            client.subscribe(topic, qos=1)
        self._say(f"--- {'reconnected' if self._ever else 'connected'} to {self.opts.url} as {self.client_id}")
        self._ever = True
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self._connected.clear()
        if self._ever and rc.is_failure:
            self._say(f"--- connection lost ({rc}); reconnecting")

    def start(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except ssl.SSLCertVerificationError as exc:
            raise DispatchError(f"TLS: the broker's certificate is not trusted ({exc.verify_message}): "
                                "wrong --ca, or wrong host name") from None
        except ssl.SSLError as exc:
            raise DispatchError(f"TLS handshake with {self.host}:{self.port} failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise DispatchError(f"cannot connect to {self.host}:{self.port}: connection refused "
                                "(broker down, or wrong port)") from None
        except OSError as exc:
            raise DispatchError(f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.1):
            if self._refused is not None or time.monotonic() > deadline:
                self.stop()
                reason = self._refused or f"no answer in {timeout:g} s"
                raise DispatchError(f"{self.opts.url}: the broker did not accept the connection: {reason}")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- what vehicles send ------------------------------------------------------------------


def describe(topic: str, payload: bytes) -> str:
    """One readable line for a vehicle message."""
    try:
        msg = json.loads(payload)
    except ValueError:
        return f"{topic}: {payload[:120]!r}"
    if not isinstance(msg, dict):
        return f"{topic}: {msg!r}"
    head = f"{str(msg.get('time', ''))[11:23]} {msg.get('vehicle_id', '?'):<10} #{msg.get('seq', '?'):<6}"
    hist = " (historical)" if msg.get("historical") else ""
    kind = msg.get("kind")
    if kind == "position":
        fix = msg.get("fix")
        where = "no fix" if not fix else (
            f"{fix['mode']}D {fix['lat']:.5f},{fix['lon']:.5f} {fix.get('speed_mps') or 0:5.1f} m/s")
        tag = f" alert {msg['alert_id'][:8]}" if msg.get("alert_id") else ""
        return f"{head} position {msg.get('reason'):<12} {where}{tag}{hist}"
    if kind == "alert":
        pos = msg.get("position", {})
        fix = pos.get("fix")
        where = "no position" if not fix else f"{fix['lat']:.5f},{fix['lon']:.5f} ({pos['source']}, {pos['age_s']} s)"
        flags = "".join(f" [{f}]" for f in ("test", "covert") if msg.get(f))
        note = f" ({msg['note']})" if msg.get("note") else ""
        return (f"{head} ALERT {msg.get('state', '').upper():<12} {msg.get('alert_id')} by {msg.get('trigger')} "
                f"at {where} attempt {msg.get('attempt')}{flags}{note}{hist}")
    if kind == "status":
        return f"{head} status   {msg.get('state')} {msg.get('reason') or ''}"
    if kind == "event":
        what = f"{msg.get('event')} {msg.get('name')} {msg.get('active')} {msg.get('detail') or ''}"
        return f"{head} event    {what}{hist}"
    if kind == "reply":
        verdict = "ok" if msg.get("ok") else "REFUSED"
        return f"{head} reply    {verdict} {msg.get('verb')} {msg.get('command_id')}: {msg.get('detail') or ''}"
    if kind == "health":
        box, link = msg.get("outbox", {}), msg.get("link", {})
        return (f"{head} health   up {msg.get('uptime_s')} s, outbox {box.get('depth')} "
                f"(evicted {box.get('evictions')}), reconnects {link.get('reconnects')}, faults {msg.get('faults')}")
    return f"{head} {kind} {json.dumps(msg)[:160]}"


def capture_line(topic: str, payload: bytes, retain: bool) -> str:
    """One received message as a capture line: the shape ``mosquitto_sub -F %J`` prints."""
    line: dict[str, Any] = {"tst": datetime.now(UTC).isoformat(), "topic": topic, "qos": 1, "retain": int(retain)}
    try:
        line["payload"] = json.loads(payload)
    except ValueError:
        line["payload"] = payload.decode("utf-8", "replace")
    return json.dumps(line, separators=(",", ":"))


def _stop_on_sigterm() -> None:
    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def watch(opts: BrokerOptions, vehicle: str, *, out: IO[str] = sys.stdout, log: IO[str] = sys.stderr,
          auto_ack: bool = False, alerts_only: bool = False, capture: IO[str] | None = None) -> int:
    """Print every vehicle message until Ctrl-C or SIGTERM (exit 0); optionally acknowledge alerts, and
    write each one to ``capture`` as a JSON line (what ``dispatch audit`` reads)."""
    link = Link(opts, "watch", log=log)
    link.subscriptions.append(f"{opts.prefix}/{vehicle}/#")

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith(("/cmd", "/alert/ack")):
            return
        if capture is not None:
            capture.write(capture_line(msg.topic, bytes(msg.payload), bool(msg.retain)) + "\n")
            capture.flush()
        if alerts_only and not msg.topic.endswith("/alert"):
            return
        print(describe(msg.topic, bytes(msg.payload)), file=out, flush=True)
        if auto_ack and msg.topic.endswith("/alert"):
            try:
                alert = json.loads(msg.payload)
            except ValueError:
                return
            if isinstance(alert, dict) and alert.get("state") in ("raised", "delivered") and not msg.retain:
                payload = json.dumps({"alert_id": alert.get("alert_id"), "action": "acknowledge", "operator": "auto"})
                c.publish(msg.topic.rsplit("/", 1)[0] + "/alert/ack", payload, qos=1)  # never wait in a callback

    link.client.on_message = on_message
    _stop_on_sigterm()
    try:
        link.start()
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        link.stop()
    return 0


# --- commands to a vehicle -----------------------------------------------------------------


def build_command(vehicle: str, verb: str, args: dict[str, Any], *, valid_s: float,
                  now: datetime | None = None) -> dict[str, Any]:
    """A command envelope (docs/mqtt-api.md), stamped from the real clock unless ``now`` is given."""
    issued = now or datetime.now(UTC)

    def iso(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    return {"command_id": f"c-{issued:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}", "vehicle_id": vehicle, "verb": verb,
            "args": args, "issued_at": iso(issued), "expires_at": iso(issued + timedelta(seconds=valid_s))}


def send_command(opts: BrokerOptions, vehicle: str, verb: str, args: dict[str, Any], *, timeout: float = 10.0,
                 valid_s: float = 60.0, log: IO[str] | None = None) -> dict[str, Any] | None:
    """Send one command and wait for the vehicle's reply to it; None when none came in ``timeout``."""
    command = build_command(vehicle, verb, args, valid_s=valid_s)
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = threading.Event()
    link = Link(opts, "dispatch", log=log)
    link.subscriptions.append(f"{opts.prefix}/{vehicle}/reply")

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(reply, dict) and reply.get("command_id") == command["command_id"]:
            replies.put(reply)

    link.client.on_message = on_message
    link.client.on_subscribe = lambda *_: subscribed.set()
    link.start()
    try:
        if not subscribed.wait(10):
            raise DispatchError(f"the broker did not confirm the subscription to {opts.prefix}/{vehicle}/reply")
        info = link.client.publish(f"{opts.prefix}/{vehicle}/cmd", json.dumps(command), qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            raise DispatchError("the broker did not accept the command (no PUBACK in 10 s)")
        try:
            return replies.get(timeout=timeout)
        except queue.Empty:
            return None
    finally:
        link.stop()
