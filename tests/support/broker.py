"""A real mosquitto on a free port of 127.0.0.1, that a test can stop, kill and restart.

Never a fake: the agent's tests assert on what this broker actually received.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, *, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class Mosquitto:
    """One broker process; ``port`` stays the same across restarts."""

    def __init__(self, workdir: Path, *, port: int | None = None, extra_conf: str = "",
                 log_types: tuple[str, ...] = ("error", "warning")) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (or run `make setup`)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.log_types = log_types
        self.proc: subprocess.Popen[bytes] | None = None
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        workdir.mkdir(parents=True, exist_ok=True)

    def write_conf(self) -> None:
        self.conf.write_text(
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            "autosave_interval 1\n"  # a kill -9 loses at most a second of the broker's own state
            f"persistence_location {self.workdir}/\n"
            "log_dest stderr\n"
            + "".join(f"log_type {kind}\n" for kind in self.log_types) +
            "max_queued_messages 0\n"
            "set_tcp_nodelay true\n"  # as a dispatch broker should: PUBACKs not held back by Nagle
            + (self.extra_conf or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n")
        )

    def start(self) -> None:
        if self.running:
            return
        self.write_conf()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
        try:
            wait_port(self.port)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """A clean stop (SIGTERM): mosquitto saves its persistent sessions."""
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        """kill -9: nothing saved."""
        if self.proc is not None and self.running:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def tls_listener(port: int, pki: Path, *, require_certificate: bool = True, acl: Path | None = None,
                 crl: Path | None = None) -> str:
    """mosquitto config for a TLS listener with client certificates, as the reference config has."""
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {pki / 'ca.crt'}",
        f"certfile {pki / 'broker.crt'}",
        f"keyfile {pki / 'broker.key'}",
        "tls_version tlsv1.2",
        f"require_certificate {'true' if require_certificate else 'false'}",
        "use_identity_as_username true",
        "allow_anonymous false" if require_certificate else "allow_anonymous true",
    ]
    if crl is not None:
        lines.append(f"crlfile {crl}")
    if acl is not None:
        lines.append(f"acl_file {acl}")
    return "\n".join(lines) + "\n"
