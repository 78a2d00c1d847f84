"""The local control socket: how the CLI talks to the running daemon.

A UNIX stream socket in the runtime directory, mode 0660: the daemon's user
and its group (``patrol-agent``: technicians join it to run ``status``,
``monitor`` and ``panic test`` without root); no network port. The server
thread ("control") accepts connections; one short thread per connection
reads a single JSON request line and puts a
:class:`ControlRequest` on the core's queue. The core answers with
:meth:`ControlRequest.send` (one JSON line each; a request may get several,
e.g. the stages of a test alarm) and :meth:`ControlRequest.finish`. The
core never blocks on a slow client: lines go through a per-connection queue.

Client side: :func:`request` sends one command and yields the replies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.threadname import name_os_thread

if TYPE_CHECKING:
    from agent.supervisor import Worker

log = logging.getLogger(__name__)

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32  # connections served at once; beyond, a client is told "busy" and closed
HANG_UP_POLL_S = 0.1  # how soon a client that hung up frees its slot
REQUEST_DEADLINE_S = 5.0  # for the whole request line: a client dripping bytes is not waited for
SOCKET_NAME = "control.sock"
_END = object()


@dataclass
class ControlRequest:
    cmd: str
    args: dict[str, Any]
    _out: queue.Queue[object] = field(default_factory=queue.Queue, repr=False)
    answered: bool = field(default=False, compare=False)  # a component took it (core thread)
    closed: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)  # client hung up

    def send(self, reply: dict[str, Any]) -> None:
        self.answered = True
        self._out.put(reply)

    def finish(self, reply: dict[str, Any] | None = None) -> None:
        self.answered = True
        if reply is not None:
            self._out.put(reply)
        self._out.put(_END)


class ControlServer:
    def __init__(self, runtime_dir: Path, post: Callable[[ControlRequest], None], *,
                 max_wait_s: float = 300.0) -> None:
        self.path = runtime_dir / SOCKET_NAME
        self._post = post
        self._max_wait_s = max_wait_s
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._slots = threading.BoundedSemaphore(MAX_CLIENTS)
        self.turned_away = 0

    def open(self) -> None:
        """Bind the socket (before READY=1: a technician's command works as soon as systemd says so)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)  # the group is the daemon's own (the unit's Group=)
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def run(self, worker: Worker) -> None:
        """The supervised "control" thread: accept, one short thread per connection."""
        assert self._sock is not None
        while not self._stop.is_set():
            worker.beat()
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                self._turn_away(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()

    def _turn_away(self, conn: socket.socket) -> None:
        """Every slot taken (a stuck or hostile local client): this one is told so at once, never queued."""
        self.turned_away += 1
        if self.turned_away in (1, 10, 100) or self.turned_away % 1000 == 0:
            log.warning("control socket: %d connections at once; %d turned away so far", MAX_CLIENTS,
                        self.turned_away)
        with conn:
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.send(json.dumps({"ok": False, "error": "busy: too many control connections at once"}).encode()
                          + b"\n")

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._handle(conn)
        finally:
            self._slots.release()

    def _handle(self, conn: socket.socket) -> None:
        name_os_thread("control-conn")
        with conn:
            conn.settimeout(REQUEST_DEADLINE_S)
            try:
                request = self._read_request(conn)
            except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
                _send(conn, {"ok": False, "error": f"bad request: {str(exc)[:200]}"})
                return
            conn.settimeout(REQUEST_DEADLINE_S)  # for each reply: a client that never reads is let go
            self._post(request)
            waited = 0.0
            while True:
                try:
                    item = request._out.get(timeout=HANG_UP_POLL_S)
                except queue.Empty:
                    waited += HANG_UP_POLL_S
                    if _hung_up(conn):
                        request.closed.set()
                        return
                    if waited >= self._max_wait_s:
                        _send(conn, {"ok": False, "error": "the daemon did not answer in time"})
                        return
                    continue
                if item is _END:
                    return
                if not _send(conn, item):  # type: ignore[arg-type]
                    request.closed.set()
                    return

    @staticmethod
    def _read_request(conn: socket.socket) -> ControlRequest:
        data = b""
        deadline = time.monotonic() + REQUEST_DEADLINE_S
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ValueError(f"no complete request line in {REQUEST_DEADLINE_S:.0f} s")
            conn.settimeout(left)
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST:
                raise ValueError("request too large")
        parsed = json.loads(data.split(b"\n", 1)[0] or b"{}")
        if not isinstance(parsed, dict) or not isinstance(parsed.get("cmd"), str):
            raise ValueError('expected {"cmd": "...", ...}')
        cmd = parsed.pop("cmd")
        return ControlRequest(cmd, parsed)


def _hung_up(conn: socket.socket) -> bool:
    """The client closed its end (a peek reads end-of-file)."""
    try:
        ready, _, _ = select.select([conn], [], [], 0)
        return bool(ready) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def _send(conn: socket.socket, reply: dict[str, Any]) -> bool:
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        return False
    return True


def request(runtime_dir: Path, cmd: str, *, timeout: float = 10.0, **args: Any) -> Iterator[dict[str, Any]]:
    """Send ``cmd`` to the daemon; yield each reply line until it closes."""
    path = runtime_dir / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        buffer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                yield json.loads(line)
