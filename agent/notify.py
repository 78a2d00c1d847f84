"""systemd notification: READY=1, WATCHDOG=1 and STATUS= as single datagrams.

No dependency: sd_notify is one AF_UNIX datagram to ``$NOTIFY_SOCKET`` (the
maintained Python bindings need libsystemd headers to build). Outside
systemd (no ``NOTIFY_SOCKET``) every call is a no-op. The core thread sends
WATCHDOG=1 from its own loop, so a hung loop stops the pings and systemd
restarts the service.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace
        self.address = address or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and (not pid or pid == str(os.getpid()))
        # ping at a third of the timeout: two pings may be late before systemd acts
        self.watchdog_interval_s: float | None = int(usec) / 3e6 if enabled else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> None:
        if self.address is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        with contextlib.suppress(OSError):  # systemd gone (shutdown): nothing to tell
            self._sock.sendto("\n".join(fields).encode(), self.address)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")
