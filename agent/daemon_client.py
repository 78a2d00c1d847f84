"""The technicians' side of the control socket: reach the running daemon or say exactly why not.

Runs in the CLI process (``status``, ``monitor``, ``panic test``, ``sim``,
doctor). :func:`open_session` connects and sends one command; the session
yields the daemon's reply lines, each wait bounded, so that a caller can
show progress while it waits. Connection failures become
:class:`DaemonUnreachable` with the exit code the CLI uses (3: not running,
4: permission denied) and one line that tells the technician what to do.
"""

from __future__ import annotations

import errno
import grp
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.control import SOCKET_NAME

NOT_RUNNING = 3
NO_PERMISSION = 4


class ToolError(Exception):
    """An ordinary failure of a technician's tool: ``str()`` is the one line to print, ``code`` the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(ToolError):
    """The daemon cannot be asked (not running: 3; permission denied: 4)."""


def _group_of(path: Path) -> str | None:
    for candidate in (path, path.parent):
        try:
            gid = candidate.stat().st_gid
        except OSError:
            continue
        try:
            return grp.getgrgid(gid).gr_name
        except KeyError:
            return str(gid)
    return None


def explain(path: Path, exc: OSError) -> DaemonUnreachable:
    """One line for a failed connect to the control socket at ``path``."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        group = _group_of(path) or "patrol-agent"
        where = path
        try:
            path.stat()
        except PermissionError:
            where = path.parent  # the runtime directory itself is closed to us
        except OSError:
            pass
        if group == "root":  # a daemon started by hand as root: joining root's group is not the answer
            return DaemonUnreachable(f"permission denied on {where}: the daemon runs as root outside its unit; "
                                     "use sudo, or run it as the service (systemctl start patrol-agent)",
                                     NO_PERMISSION)
        return DaemonUnreachable(
            f"permission denied on {where}: add yourself to group {group} "
            f"(sudo usermod -aG {group} $USER, then log in again), or use sudo", NO_PERMISSION)
    if isinstance(exc, FileNotFoundError):
        return DaemonUnreachable(f"the daemon is not running (no {path}): systemctl start patrol-agent; "
                                 "journalctl -u patrol-agent -e says why it stopped", NOT_RUNNING)
    if isinstance(exc, ConnectionRefusedError):
        return DaemonUnreachable(f"the daemon is not running ({path} is left over, nobody listens): "
                                 "systemctl start patrol-agent", NOT_RUNNING)
    if isinstance(exc, TimeoutError):
        return DaemonUnreachable(f"the daemon does not answer on {path} (hung?): "
                                 "journalctl -u patrol-agent -e", NOT_RUNNING)
    return DaemonUnreachable(f"cannot reach the daemon on {path}: {exc.strerror or exc}", NOT_RUNNING)


class Session:
    """One command on the control socket and its replies. Closing it hangs up (the daemon sees that)."""

    def __init__(self, runtime_dir: Path, cmd: str, *, connect_timeout: float = 5.0, **args: Any) -> None:
        self.path = runtime_dir / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(connect_timeout)
        try:
            if not self._is_socket():
                raise FileNotFoundError(errno.ENOENT, "no control socket", str(self.path))
            sock.connect(str(self.path))
            sock.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
        except OSError as exc:
            sock.close()
            raise explain(self.path, exc) from None
        self._sock = sock
        self._buffer = b""
        self.closed_by_daemon = False

    def _is_socket(self) -> bool:
        try:
            return stat.S_ISSOCK(self.path.stat().st_mode)
        except FileNotFoundError:
            return False
        except PermissionError:
            return True  # let connect() say it with the right errno

    def next_reply(self, timeout: float) -> dict[str, Any] | None:
        """The next reply line; None when ``timeout`` passed without one. EOFError when the daemon hung up."""
        self._sock.settimeout(max(timeout, 0.001))
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return None
            except OSError as exc:
                raise EOFError(str(exc)) from None
            if not chunk:
                self.closed_by_daemon = True
                raise EOFError("the daemon closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply = json.loads(line)
        return reply if isinstance(reply, dict) else {"ok": False, "error": f"unexpected reply {reply!r}"}

    def replies(self, timeout: float = 10.0) -> Iterator[dict[str, Any]]:
        """Every reply until the daemon hangs up; TimeoutError if one takes longer than ``timeout``."""
        while True:
            try:
                reply = self.next_reply(timeout)
            except EOFError:
                return
            if reply is None:
                raise TimeoutError(f"no answer from the daemon in {timeout:g} s")
            yield reply

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def ask(runtime_dir: Path, cmd: str, *, timeout: float = 10.0, **args: Any) -> list[dict[str, Any]]:
    """Every reply to ``cmd`` (DaemonUnreachable when the daemon cannot be asked)."""
    with Session(runtime_dir, cmd, **args) as session:
        try:
            return list(session.replies(timeout))
        except TimeoutError as exc:
            raise explain(session.path, exc) from None


def status(runtime_dir: Path, *, timeout: float = 5.0) -> dict[str, Any]:
    """The daemon's ``status`` reply (its state), or DaemonUnreachable."""
    reply = ask(runtime_dir, "status", timeout=timeout)
    if not reply or not reply[-1].get("ok"):
        error = reply[-1].get("error") if reply else "no answer"
        raise DaemonUnreachable(f"the daemon refused status: {error}", 1)
    state = reply[-1].get("status")
    return state if isinstance(state, dict) else {}
