"""A GNSS receiver on a real pty, that a test can write bytes to, unplug and replug.

The agent opens ``path``, a symlink to the current pty device, as it would
open ``/dev/serial/by-id/...`` for a USB receiver: unplugging closes the pty
and removes the link; replugging makes a new pty behind the same link.
"""

from __future__ import annotations

import contextlib
import os
import tty
from pathlib import Path


class PtyGnss:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._master: int | None = None
        self._slave: int | None = None
        self.plug()

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def plug(self) -> None:
        if self.plugged:
            return
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: a serial line carries raw bytes
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.path.with_name(self.path.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.path)

    def unplug(self) -> None:
        self.path.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def replug(self) -> None:
        self.unplug()
        self.plug()

    def write(self, data: bytes | str) -> None:
        """Write as the receiver would; bytes the line cannot take now are dropped, as on a UART."""
        if self._master is None:
            return
        raw = data.encode("ascii") if isinstance(data, str) else data
        with contextlib.suppress(BlockingIOError):
            os.write(self._master, raw)

    def drain_echo(self) -> None:
        """Discard anything the agent wrote towards the receiver."""
        if self._master is None:
            return
        try:
            while os.read(self._master, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        self.unplug()
