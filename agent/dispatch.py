"""Dispatch-side tools: watch what vehicles send, acknowledge and clear alerts.

``patrol-agent watch`` and ``patrol-agent dispatch ...`` run in the CLI
process with a paho client of their own (on paho's loop thread). They are an
example for dispatch integrators and the demo's and tests' dispatcher; the
real dispatch centre builds on ``docs/mqtt-api.md``.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
from typing import IO, Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def connect(url: str, *, client_id: str, ca: str | None = None, cert: str | None = None, key: str | None = None,
            username: str | None = None, password: str | None = None) -> mqtt.Client:
    parts = urlsplit(url)
    tls = parts.scheme == "mqtts"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    if tls:
        ctx = ssl.create_default_context(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
        client.tls_set_context(ctx)
    if username:
        client.username_pw_set(username, password)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect(parts.hostname or "127.0.0.1", parts.port or (8883 if tls else 1883), keepalive=30)
    client.loop_start()
    if not connected.wait(10):
        raise ConnectionError(f"no answer from {url}")
    return client


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
        return (f"{head} ALERT {msg.get('state', '').upper():<12} {msg.get('alert_id')} by {msg.get('trigger')} "
                f"at {where} attempt {msg.get('attempt')}{flags}{hist}")
    if kind == "status":
        return f"{head} status   {msg.get('state')} {msg.get('reason') or ''}"
    if kind == "event":
        what = f"{msg.get('event')} {msg.get('name')} {msg.get('active')} {msg.get('detail') or ''}"
        return f"{head} event    {what}{hist}"
    if kind == "health":
        box, link = msg.get("outbox", {}), msg.get("link", {})
        return (f"{head} health   up {msg.get('uptime_s')} s, outbox {box.get('depth')} "
                f"(evicted {box.get('evictions')}), reconnects {link.get('reconnects')}, faults {msg.get('faults')}")
    return f"{head} {kind} {json.dumps(msg)[:160]}"


def watch(client: mqtt.Client, prefix: str, vehicle: str, *, out: IO[str] = sys.stdout,
          auto_ack: bool = False, alerts_only: bool = False) -> None:
    """Print every vehicle message until interrupted; optionally acknowledge alerts."""
    topic = f"{prefix}/{vehicle}/#"

    def on_message(c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith(("/cmd", "/alert/ack")):
            return
        if alerts_only and not msg.topic.endswith("/alert"):
            return
        print(describe(msg.topic, bytes(msg.payload)), file=out, flush=True)
        if auto_ack and msg.topic.endswith("/alert"):
            alert = json.loads(msg.payload)
            if alert.get("state") in ("raised", "delivered") and not msg.retain:
                send_ack(c, msg.topic.rsplit("/", 1)[0] + "/alert/ack", alert["alert_id"], "acknowledge", "auto",
                         wait=False)  # never block inside a paho callback

    client.on_message = on_message
    client.subscribe(topic, qos=1)
    threading.Event().wait()


def send_ack(client: mqtt.Client, topic: str, alert_id: str, action: str, operator: str | None, *,
             wait: bool = True) -> None:
    payload = json.dumps({"alert_id": alert_id, "action": action, "operator": operator})
    info = client.publish(topic, payload, qos=1)
    if wait:
        info.wait_for_publish(10)
