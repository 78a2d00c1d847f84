"""Secure by default: the checks that stop the agent from sending police data unprotected.

Run once at start (CLI process, before anything connects). Refused unless
``mqtt.lab_mode`` says this is a lab: a plain-TCP broker, TLS without an
explicit CA to verify the broker against, a private key readable by others,
a client certificate that is not this vehicle's (its CN must be the vehicle
id: the broker's ACL is keyed on it), a missing or unreadable certificate.
TLS itself is always 1.2 or newer with the broker's hostname verified: there
is no setting to turn either off. In lab mode each problem is a warning at
every start, and health reports ``lab_mode: true``.
"""

from __future__ import annotations

import ssl
import stat
import time
from typing import Any
from urllib.parse import urlsplit

from agent.config import AgentConfig


def problems(cfg: AgentConfig) -> list[str]:
    found: list[str] = []
    mqtt = cfg.mqtt
    for url in mqtt.brokers:
        if urlsplit(url).scheme != "mqtts":
            found.append(f"mqtt.brokers: {url} is plain TCP: positions and alerts would travel unencrypted "
                         "(use mqtts://)")
    if any(urlsplit(url).scheme == "mqtts" for url in mqtt.brokers):
        tls = mqtt.tls
        if tls.ca_file is None:
            found.append("mqtt.tls.ca_file: not set: the broker must be verified against the fleet's own CA")
        elif not tls.ca_file.exists():
            found.append(f"mqtt.tls.ca_file: {tls.ca_file} does not exist")
        if tls.cert_file is None or tls.key_file is None:
            found.append("mqtt.tls.cert_file / key_file: not set: this vehicle needs its own client certificate")
        else:
            found += _key_problems(tls.key_file)
            found += _cert_problems(tls.cert_file, cfg.vehicle.id)
    return found


def _key_problems(path: Any) -> list[str]:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        return [f"mqtt.tls.key_file: {path}: {exc.strerror}"]
    if mode & 0o007:
        return [f"mqtt.tls.key_file: {path} is readable by others ({mode:04o}); chmod 0640 (root:patrol-agent)"]
    return []


def _cert_problems(path: Any, vehicle_id: str) -> list[str]:
    try:
        info: dict[str, Any] = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    except (ssl.SSLError, OSError) as exc:
        return [f"mqtt.tls.cert_file: {path}: unreadable ({exc})"]
    subject = dict(item for rdn in info.get("subject", ()) for item in rdn)
    found = []
    if subject.get("commonName") != vehicle_id:
        found.append(f"mqtt.tls.cert_file: issued to {subject.get('commonName')!r}, but this vehicle is "
                     f"{vehicle_id!r}")
    if ssl.cert_time_to_seconds(info["notAfter"]) < time.time():
        found.append(f"mqtt.tls.cert_file: expired on {info['notAfter']}")
    return found
